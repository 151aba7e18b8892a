// Every role assignment, least privilege for each identity. No identity gets a key or a management
// role on storage; data-plane roles are scoped to the containers an identity works in.
param dataAccountName string
param operationsAccountName string
param inputContainer string
param outputContainer string
param workContainer string
param appInsightsName string
param workspaceName string
param registryName string
param functionPrincipalId string
param computePrincipalId string
param workspacePrincipalId string
@description('The person running azd (uploads videos, registers the Azure ML component); empty to skip.')
param userPrincipalId string = ''
param userPrincipalType string = 'User'

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  storageFileDataPrivilegedContributor: '69566ab7-960f-475b-8e7c-b3118f30c6bd'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  acrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d'
}

resource dataAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: dataAccountName
}

resource operationsAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: operationsAccountName
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = [for container in dataContainers: {
  name: '${dataAccountName}/default/${container}'
}]

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' existing = {
  name: workspaceName
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: registryName
}

var dataContainers = [ inputContainer, outputContainer, workContainer ]
// A variable, not inline: tree-sitter-bicep 1.1.0 misreads `f().x` as an array item.
var groupScope = resourceGroup().id
var user = empty(userPrincipalId) ? [] : [ userPrincipalId ]

// Grants per scope. Who needs what, and why:
// - Function app: the Functions runtime and Durable task hub (operations account: blobs, queues,
//   tables); uploads, outputs and batch segments (the three data containers) and the batch queue;
//   telemetry; submitting and following jobs in the workspace (custom role below).
// - Compute cluster: read segments and write styled segments (work container); job snapshots and
//   logs in the workspace's storage (operations account); the environment image (registry).
// - Workspace: its identity-based system datastores (operations account) and a read-only view of
//   the work container for the studio.
// - The person deploying: upload videos and read results (data account); upload the component's
//   code snapshot (operations account).
var operationsGrants = concat([
  { principal: functionPrincipalId, role: roles.storageBlobDataOwner }
  { principal: functionPrincipalId, role: roles.storageQueueDataContributor }
  { principal: functionPrincipalId, role: roles.storageTableDataContributor }
  { principal: computePrincipalId, role: roles.storageBlobDataContributor }
  { principal: workspacePrincipalId, role: roles.storageBlobDataContributor }
  { principal: workspacePrincipalId, role: roles.storageFileDataPrivilegedContributor }
], map(user, id => { principal: id, role: roles.storageBlobDataContributor }))
var dataAccountGrants = concat([
  { principal: functionPrincipalId, role: roles.storageQueueDataContributor }
], map(user, id => { principal: id, role: roles.storageBlobDataContributor }))
var containerGrants = [
  { container: 0, principal: functionPrincipalId, role: roles.storageBlobDataContributor }
  { container: 1, principal: functionPrincipalId, role: roles.storageBlobDataContributor }
  { container: 2, principal: functionPrincipalId, role: roles.storageBlobDataContributor }
  { container: 2, principal: computePrincipalId, role: roles.storageBlobDataContributor }
  { container: 2, principal: workspacePrincipalId, role: roles.storageBlobDataReader }
]

resource operationsAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for grant in operationsGrants: {
  scope: operationsAccount
  name: guid(operationsAccount.id, grant.principal, grant.role)
  properties: {
    principalId: grant.principal
    principalType: contains(user, grant.principal) ? userPrincipalType : 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', grant.role)
  }
}]

resource dataAccountAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for grant in dataAccountGrants: {
  scope: dataAccount
  name: guid(dataAccount.id, grant.principal, grant.role)
  properties: {
    principalId: grant.principal
    principalType: contains(user, grant.principal) ? userPrincipalType : 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', grant.role)
  }
}]

resource containerAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for grant in containerGrants: {
  scope: containers[grant.container]
  name: guid(containers[grant.container].id, grant.principal, grant.role)
  properties: {
    principalId: grant.principal
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', grant.role)
  }
}]

resource telemetryAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: appInsights
  name: guid(appInsights.id, functionPrincipalId, roles.monitoringMetricsPublisher)
  properties: {
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
  }
}

resource imagePullAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: registry
  name: guid(registry.id, computePrincipalId, roles.acrPull)
  properties: {
    principalId: computePrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.acrPull)
  }
}

// Submit and read command jobs made from registered components, and nothing else in the workspace:
// no compute or datastore changes, no datastore secrets.
resource jobSubmitter 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(workspace.id, 'stylize-job-submitter')
  properties: {
    roleName: 'Stylize job submitter (${workspaceName})'
    description: 'Submit and follow Azure ML command jobs made from registered components.'
    type: 'CustomRole'
    assignableScopes: [ groupScope ]
    permissions: [
      {
        actions: [
          'Microsoft.MachineLearningServices/workspaces/read'
          'Microsoft.MachineLearningServices/workspaces/jobs/read'
          'Microsoft.MachineLearningServices/workspaces/jobs/write'
          'Microsoft.MachineLearningServices/workspaces/experiments/read'
          'Microsoft.MachineLearningServices/workspaces/experiments/write'
          'Microsoft.MachineLearningServices/workspaces/experiments/runs/read'
          'Microsoft.MachineLearningServices/workspaces/experiments/runs/write'
          'Microsoft.MachineLearningServices/workspaces/experiments/runs/submit/action'
          'Microsoft.MachineLearningServices/workspaces/components/read'
          'Microsoft.MachineLearningServices/workspaces/components/versions/read'
          'Microsoft.MachineLearningServices/workspaces/environments/read'
          'Microsoft.MachineLearningServices/workspaces/environments/versions/read'
          'Microsoft.MachineLearningServices/workspaces/codes/read'
          'Microsoft.MachineLearningServices/workspaces/codes/versions/read'
          'Microsoft.MachineLearningServices/workspaces/computes/read'
          'Microsoft.MachineLearningServices/workspaces/datastores/read'
        ]
        notActions: []
      }
    ]
  }
}

resource jobSubmitterAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: workspace
  name: guid(workspace.id, functionPrincipalId, jobSubmitter.id)
  properties: {
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: jobSubmitter.id
  }
}
