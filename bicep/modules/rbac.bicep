// Every role assignment, least privilege for each identity. No identity gets a key or a management
// role on storage; data-plane roles are scoped to the container or queue an identity works in. Only
// built-in roles: a custom role made in the same deployment as its assignment can fail the first
// `azd up` with RoleDefinitionDoesNotExist while the definition replicates.
//
// Who gets what, and why:
// - Function app: the Functions host's account (host keys, deployment package, Durable task hub,
//   the blob trigger's internal queue and receipts: blobs, queues, tables); the upload trigger
//   (Storage Blob Data Owner on the input container, and Storage Queue Data Contributor for the
//   poison queue it writes on the trigger's account: the roles Azure Functions documents for a
//   blob trigger); outputs and batch segments (output and work containers); styles to validate
//   uploads (read); sending batches and reading the batch queue's length (to size the workers); the result queue's trigger
//   (Storage Queue Data Contributor: the Queues extension releases a message whose function failed by
//   updating its visibility, messages/write, which Reader and Message Processor lack; with them a
//   failed delivery gets a 403 and waits out the listener's lease) and its poison queue (send); telemetry;
//   submitting and following worker jobs in the workspace (AzureML Data Scientist, below). Many
//   models: sending shards and reading the shard queue's length; the shard results' trigger (the
//   same role) and its poison queue; reading the manifest (models) and the readings' header
//   (sensor-data) to plan a run; a run's state (work container) and its predictions and report
//   (output container) are in containers it already writes.
// - GPU cluster: taking batches and keeping them hidden while it works (renewing a message's
//   visibility is an update, which Message Processor does not allow: Queue Data Contributor on the
//   batch queue alone); sending results and poison batches; segments and the job's checked style
//   picture in, styled segments out (work container); the environment image (registry); code
//   snapshots and job logs in the workspace's storage. Nothing on the Functions host's account.
// - CPU cluster (shard workers), the same way: taking shards and keeping them hidden (Queue Data
//   Contributor on the shard queue); sending shard results and poison shards; reading the readings
//   and the models; writing predictions (work container); the image; code snapshots and job logs.
//   Nothing on the Functions host's account, nothing of the video pipeline's queues.
// - Workspace: nothing here. Azure ML assigns its identity the roles it needs on the workspace's
//   storage when it creates the workspace; assigning them again fails the deployment with
//   RoleAssignmentExists (Azure ML docs, "disable local auth for storage"; MicrosoftDocs/azure-docs
//   issues 80686 and 80040).
// - The person deploying: upload videos and styles, read results (data account); upload the
//   component's code snapshot from the post-deploy hook (workspace storage).
param dataAccountName string
param hostAccountName string
param mlAccountName string
param inputContainer string
param outputContainer string
param workContainer string
param stylesContainer string
param sensorDataContainer string
param modelsContainer string
param batchQueue string
param resultQueue string
param batchPoisonQueue string
param resultPoisonQueue string
param blobTriggerPoisonQueue string
param shardQueue string
param shardResultQueue string
param shardPoisonQueue string
param shardResultPoisonQueue string
param appInsightsName string
param workspaceName string
param registryName string
param functionPrincipalId string
param computePrincipalId string
param cpuPrincipalId string
param eventHubNamespaceName string
param eventHubName string
@description('The sensors\' identity, which sends readings to the hub; empty to skip.')
param sensorPrincipalId string = ''
@description('The person running azd (uploads videos, registers the Azure ML component); empty to skip.')
param userPrincipalId string = ''
param userPrincipalType string = 'User'

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageQueueDataReader: '19e7f393-937e-4f77-808e-94535e297925'
  storageQueueDataMessageSender: 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  acrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d'
  // Every action Azure ML documents for "Submitting any type of run (V2)" ("Manage access to Azure
  // Machine Learning workspaces"), without compute create/delete, workspace changes or listKeys.
  // It also manages the workspace's other assets (models, endpoints, datastores); the workspace
  // holds no secret (identity-based datastores, no connections), and submitting jobs already means
  // running code on the cluster as its identity, so that adds little reach.
  azureMLDataScientist: 'f6c7c914-8db3-469d-8ca1-694a8f32e121'
  azureEventHubsDataSender: '2b629674-e913-4c01-ae53-ef4638d8f975'
}
var containerNames = [ inputContainer, outputContainer, workContainer, stylesContainer, sensorDataContainer, modelsContainer ]
var queueNames = [
  batchQueue, resultQueue, batchPoisonQueue, resultPoisonQueue, blobTriggerPoisonQueue
  shardQueue, shardResultQueue, shardPoisonQueue, shardResultPoisonQueue
]

resource dataAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: dataAccountName
}

resource hostAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: hostAccountName
}

resource mlAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: mlAccountName
}

resource dataContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = [for name in containerNames: {
  name: '${dataAccountName}/default/${name}'
}]

resource dataQueues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = [for name in queueNames: {
  name: '${dataAccountName}/default/${name}'
}]

resource eventHubNamespace 'Microsoft.EventHub/namespaces@2024-01-01' existing = {
  name: eventHubNamespaceName
}

resource eventHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' existing = {
  parent: eventHubNamespace
  name: eventHubName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-09-01' existing = {
  name: workspaceName
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: registryName
}

var hostGrants = [
  { principal: functionPrincipalId, role: roles.storageBlobDataOwner }
  { principal: functionPrincipalId, role: roles.storageQueueDataContributor }
  { principal: functionPrincipalId, role: roles.storageTableDataContributor }
]
var mlStorageGrants = [
  { principal: computePrincipalId, role: roles.storageBlobDataContributor }
  { principal: cpuPrincipalId, role: roles.storageBlobDataContributor }
]
var registryGrants = [
  { principal: computePrincipalId, role: roles.acrPull }
  { principal: cpuPrincipalId, role: roles.acrPull }
]
var containerGrants = [
  { container: inputContainer, principal: functionPrincipalId, role: roles.storageBlobDataOwner }
  { container: outputContainer, principal: functionPrincipalId, role: roles.storageBlobDataContributor }
  { container: workContainer, principal: functionPrincipalId, role: roles.storageBlobDataContributor }
  { container: stylesContainer, principal: functionPrincipalId, role: roles.storageBlobDataReader }
  { container: workContainer, principal: computePrincipalId, role: roles.storageBlobDataContributor }
  { container: modelsContainer, principal: functionPrincipalId, role: roles.storageBlobDataReader }
  { container: sensorDataContainer, principal: functionPrincipalId, role: roles.storageBlobDataReader }
  { container: sensorDataContainer, principal: cpuPrincipalId, role: roles.storageBlobDataReader }
  { container: modelsContainer, principal: cpuPrincipalId, role: roles.storageBlobDataReader }
  { container: workContainer, principal: cpuPrincipalId, role: roles.storageBlobDataContributor }
]
var queueGrants = [
  { queue: batchQueue, principal: functionPrincipalId, role: roles.storageQueueDataMessageSender }
  { queue: batchQueue, principal: functionPrincipalId, role: roles.storageQueueDataReader }
  { queue: resultQueue, principal: functionPrincipalId, role: roles.storageQueueDataContributor }
  { queue: resultPoisonQueue, principal: functionPrincipalId, role: roles.storageQueueDataMessageSender }
  { queue: blobTriggerPoisonQueue, principal: functionPrincipalId, role: roles.storageQueueDataContributor }
  { queue: batchQueue, principal: computePrincipalId, role: roles.storageQueueDataContributor }
  { queue: resultQueue, principal: computePrincipalId, role: roles.storageQueueDataMessageSender }
  { queue: batchPoisonQueue, principal: computePrincipalId, role: roles.storageQueueDataMessageSender }
  { queue: shardQueue, principal: functionPrincipalId, role: roles.storageQueueDataMessageSender }
  { queue: shardQueue, principal: functionPrincipalId, role: roles.storageQueueDataReader }
  { queue: shardResultQueue, principal: functionPrincipalId, role: roles.storageQueueDataContributor }
  { queue: shardResultPoisonQueue, principal: functionPrincipalId, role: roles.storageQueueDataMessageSender }
  { queue: shardQueue, principal: cpuPrincipalId, role: roles.storageQueueDataContributor }
  { queue: shardResultQueue, principal: cpuPrincipalId, role: roles.storageQueueDataMessageSender }
  { queue: shardPoisonQueue, principal: cpuPrincipalId, role: roles.storageQueueDataMessageSender }
]

resource hostAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for grant in hostGrants: {
  scope: hostAccount
  name: guid(hostAccount.id, grant.principal, grant.role)
  properties: {
    principalId: grant.principal
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', grant.role)
  }
}]

resource mlStorageAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for grant in mlStorageGrants: {
  scope: mlAccount
  name: guid(mlAccount.id, grant.principal, grant.role)
  properties: {
    principalId: grant.principal
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', grant.role)
  }
}]

resource containerAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for grant in containerGrants: {
  scope: dataContainers[indexOf(containerNames, grant.container)]
  name: guid(dataContainers[indexOf(containerNames, grant.container)].id, grant.principal, grant.role)
  properties: {
    principalId: grant.principal
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', grant.role)
  }
}]

resource queueAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for grant in queueGrants: {
  scope: dataQueues[indexOf(queueNames, grant.queue)]
  name: guid(dataQueues[indexOf(queueNames, grant.queue)].id, grant.principal, grant.role)
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

resource jobSubmitterAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: workspace
  name: guid(workspace.id, functionPrincipalId, roles.azureMLDataScientist)
  properties: {
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.azureMLDataScientist)
  }
}

resource imagePullAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for grant in registryGrants: {
  scope: registry
  name: guid(registry.id, grant.principal, grant.role)
  properties: {
    principalId: grant.principal
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', grant.role)
  }
}]

resource userDataAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  scope: dataAccount
  name: guid(dataAccount.id, userPrincipalId, roles.storageBlobDataContributor)
  properties: {
    principalId: userPrincipalId
    principalType: userPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
  }
}

resource userCodeSnapshotAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  scope: mlAccount
  name: guid(mlAccount.id, userPrincipalId, roles.storageBlobDataContributor)
  properties: {
    principalId: userPrincipalId
    principalType: userPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
  }
}

// Sending readings to the hub: the sensors, and the person deploying (score-models send).
resource sensorSenderAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(sensorPrincipalId)) {
  scope: eventHub
  name: guid(eventHub.id, sensorPrincipalId, roles.azureEventHubsDataSender)
  properties: {
    principalId: sensorPrincipalId
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.azureEventHubsDataSender)
    principalType: 'ServicePrincipal'
  }
}

resource userSenderAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  scope: eventHub
  name: guid(eventHub.id, userPrincipalId, roles.azureEventHubsDataSender)
  properties: {
    principalId: userPrincipalId
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.azureEventHubsDataSender)
    principalType: userPrincipalType
  }
}
