// Everything `azd up` provisions for the stylize pipeline, in one resource group. One module per
// concern; the role assignments of every identity are in modules/rbac.bicep.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; names and tags every resource.')
param environmentName string

@minLength(1)
@description('Region of every resource. It needs Flex Consumption and quota for the GPU VM size.')
param location string

@description('Object id of the person running azd (azd sets it); granted upload rights on the data account.')
param principalId string = ''

@allowed([ 'User', 'ServicePrincipal' ])
param principalType string = 'User'

@description('VM size of the GPU cluster nodes (check your quota for its family in this region).')
param gpuVmSize string = 'Standard_NC4as_T4_v3'

@minValue(1)
@description('Most GPU nodes at once; batches beyond that wait in the Azure ML queue.')
param gpuMaxNodes int = 4

@description('Low-priority nodes: much cheaper, may be pre-empted (a pre-empted batch is resubmitted).')
param gpuLowPriority bool = false

@minValue(0)
@description('Seconds a node stays idle before the cluster scales it down (to 0 nodes in the end).')
param gpuIdleSecondsBeforeScaleDown int = 300

@allowed([ 'candy', 'mosaic', 'rain_princess', 'udnie' ])
@description('Style of uploads that name none (blob metadata "style" or a leading style folder wins).')
param defaultStyle string = 'candy'

@minValue(1)
@description('Frames per batch: one Azure ML job each.')
param batchFrames int = 240

@minValue(1)
param functionMaximumInstances int = 40

@allowed([ 2048, 4096 ])
@description('Memory of a Function app instance; splitting and stitching run there.')
param functionInstanceMemoryMB int = 4096

@minValue(1)
@description('Days after which batch segments and styled segments in the work container are deleted.')
param workRetentionDays int = 7

var token = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var containers = {
  input: 'videos-in'
  output: 'videos-out'
  work: 'stylize-work'
  deployment: 'app-package'
}
var batchQueue = 'batches'
var taskHub = 'stylize'
var computeName = 'gpu-cluster'
var datastoreName = 'stylize_work'
var componentName = 'stylize_batch'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-func-${token}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${token}'
    appInsightsName: 'appi-${token}'
    location: location
    tags: tags
  }
}

module dataStorage 'modules/storage-account.bicep' = {
  name: 'data-storage'
  scope: rg
  params: {
    name: 'stdata${token}'
    location: location
    tags: tags
    containers: [ containers.input, containers.output, containers.work ]
    queues: [ batchQueue ]
    expiry: [ { prefix: '${containers.work}/jobs/', days: workRetentionDays } ]
  }
}

module operationsStorage 'modules/storage-account.bicep' = {
  name: 'operations-storage'
  scope: rg
  params: {
    name: 'stops${token}'
    location: location
    tags: tags
    containers: [ containers.deployment ]
  }
}

module workspace 'modules/ml-workspace.bicep' = {
  name: 'ml-workspace'
  scope: rg
  params: {
    workspaceName: 'mlw-${token}'
    keyVaultName: 'kv-${token}'
    registryName: 'cr${token}'
    location: location
    tags: tags
    storageAccountId: operationsStorage.outputs.id
    appInsightsId: monitoring.outputs.appInsightsId
  }
}

module compute 'modules/ml-compute.bicep' = {
  name: 'ml-compute'
  scope: rg
  params: {
    workspaceName: workspace.outputs.name
    name: computeName
    location: location
    tags: tags
    vmSize: gpuVmSize
    maxNodes: gpuMaxNodes
    lowPriority: gpuLowPriority
    idleSecondsBeforeScaleDown: gpuIdleSecondsBeforeScaleDown
  }
}

module datastore 'modules/ml-datastore.bicep' = {
  name: 'ml-datastore'
  scope: rg
  params: {
    workspaceName: workspace.outputs.name
    name: datastoreName
    accountName: dataStorage.outputs.name
    containerName: containers.work
  }
}

module functionApp 'modules/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  params: {
    planName: 'plan-${token}'
    appName: 'func-${token}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    operationsAccountName: operationsStorage.outputs.name
    deploymentContainer: containers.deployment
    dataBlobEndpoint: dataStorage.outputs.blobEndpoint
    dataQueueEndpoint: dataStorage.outputs.queueEndpoint
    appInsightsConnectionString: monitoring.outputs.connectionString
    maximumInstanceCount: functionMaximumInstances
    instanceMemoryMB: functionInstanceMemoryMB
    stylizeSettings: {
      STYLIZE_TASK_HUB: taskHub
      STYLIZE_BLOB_TRIGGER_SOURCE: 'EventGrid'
      STYLIZE_INPUT_CONTAINER: containers.input
      STYLIZE_OUTPUT_CONTAINER: containers.output
      STYLIZE_WORK_CONTAINER: containers.work
      STYLIZE_BATCH_QUEUE: batchQueue
      STYLIZE_DEFAULT_STYLE: defaultStyle
      STYLIZE_BATCH_FRAMES: string(batchFrames)
      STYLIZE_COMPUTE_BACKEND: 'azureml'
      STYLIZE_AZUREML_SUBSCRIPTION_ID: subscription().subscriptionId
      STYLIZE_AZUREML_RESOURCE_GROUP: rg.name
      STYLIZE_AZUREML_WORKSPACE: workspace.outputs.name
      STYLIZE_AZUREML_COMPUTE: compute.outputs.name
      STYLIZE_AZUREML_COMPONENT: componentName
      STYLIZE_AZUREML_DATASTORE: datastore.outputs.name
    }
  }
}

module events 'modules/event-grid.bicep' = {
  name: 'event-grid'
  scope: rg
  params: {
    location: location
    tags: tags
    dataAccountId: dataStorage.outputs.id
    dataTopicName: 'evgt-data-${token}'
    workspaceId: workspace.outputs.id
    workspaceTopicName: 'evgt-ml-${token}'
  }
}

module rbac 'modules/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    dataAccountName: dataStorage.outputs.name
    operationsAccountName: operationsStorage.outputs.name
    inputContainer: containers.input
    outputContainer: containers.output
    workContainer: containers.work
    appInsightsName: monitoring.outputs.appInsightsName
    workspaceName: workspace.outputs.name
    registryName: workspace.outputs.registryName
    functionPrincipalId: identity.outputs.principalId
    computePrincipalId: compute.outputs.principalId
    workspacePrincipalId: workspace.outputs.principalId
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
}

// Read by azd, the post-deploy hook (deploy/postdeploy.py) and the README's commands.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output FUNCTION_APP_NAME string = functionApp.outputs.name
output FUNCTION_APP_URL string = 'https://${functionApp.outputs.defaultHostName}'
output DATA_STORAGE_ACCOUNT string = dataStorage.outputs.name
output INPUT_CONTAINER string = containers.input
output OUTPUT_CONTAINER string = containers.output
output WORK_CONTAINER string = containers.work
output DATA_EVENTS_TOPIC string = events.outputs.dataTopicName
output WORKSPACE_EVENTS_TOPIC string = events.outputs.workspaceTopicName
output AZUREML_WORKSPACE string = workspace.outputs.name
output AZUREML_COMPUTE string = compute.outputs.name
output AZUREML_COMPONENT string = componentName
