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
@description('Most GPU nodes at once, and so most worker jobs at once (one per node).')
param gpuMaxNodes int = 4

@description('Low-priority nodes: much cheaper, may be pre-empted (the batches of a pre-empted worker are redelivered).')
param gpuLowPriority bool = false

@minValue(0)
@description('Seconds a node stays idle before the cluster scales it down (to 0 nodes in the end).')
param gpuIdleSecondsBeforeScaleDown int = 300

@description('VM size of the CPU cluster nodes that score model shards.')
param cpuVmSize string = 'Standard_DS3_v2'

@minValue(1)
@description('Most CPU nodes at once, and so most shard worker jobs at once (one per node).')
param cpuMaxNodes int = 2

@description('Low-priority CPU nodes: cheaper, may be pre-empted (the shard a pre-empted worker held is redelivered).')
param cpuLowPriority bool = false

@minValue(0)
@description('Seconds a CPU node stays idle before the cluster scales it down (to 0 nodes in the end).')
param cpuIdleSecondsBeforeScaleDown int = 120

@description('When the many-models run starts (NCRONTAB, UTC); each run scores the last window (STYLIZE_MODELS_WINDOW_S long) that ended at least a Capture interval and a minute before: ten past the hour scores the hour before.')
param modelsSchedule string = '0 10 * * * *'

@minValue(1)
@description('Length in seconds of the window a scheduled many-models run scores; match it to modelsSchedule.')
param modelsWindowSeconds int = 3600

@description('Partitions of the readings\' Event Hub (1 to 32 on Standard).')
@minValue(1)
@maxValue(32)
param readingsPartitions int = 4

@description('Event Hubs Capture writes each partition\'s readings to a file every this many seconds (60 to 900).')
@minValue(60)
@maxValue(900)
param captureIntervalSeconds int = 300

@description('Where scheduled windows read their readings: true, the Event Hub\'s Capture files; false, the one blob sensor-data/sensor_data.csv (the reference data, or a file you upload).')
param readingsFromCapture bool = true

@description('The sensors\' identity (object id), given Azure Event Hubs Data Sender on the hub; empty to skip.')
param sensorPrincipalId string = ''

// The 26 built-in styles (gpu_job/styles.py), which ship inside the wheel: a default that needs a
// download (the pytorch/examples checkpoints) would fetch it from a third-party archive on every new node.
@allowed([
  'ochre', 'outline', 'charcoal', 'ribbons', 'crimson', 'fauve', 'cells', 'primary', 'watercolour'
  'pebbles', 'sienna', 'sketch', 'pastel', 'harlequin', 'frost', 'lattice', 'impasto', 'weave', 'sepia'
  'starry', 'ember', 'cutout', 'comic', 'noir', 'etching', 'tapestry'
])
@description('Style of uploads that name none (blob metadata "style" or a leading style folder wins); any built-in style.')
param defaultStyle string = 'starry'

@minValue(1)
@description('Frames per batch: one queue message each.')
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
  styles: 'styles'
  // Many models: the readings, the models (manifest and model files), and (in the output container)
  // predictions/<run id>/; a run's shards and state are in the work container under runs/<run id>/.
  sensorData: 'sensor-data'
  models: 'models'
  deployment: 'app-package'
}
var queues = {
  batches: 'batches'
  results: 'batch-results'
  // Where the workers move a batch that keeps killing them, and where the Functions host moves a
  // result it cannot process (the queue trigger's `<queue>-poison`).
  batchesPoison: 'batches-poison'
  resultsPoison: 'batch-results-poison'
  // Where the blob trigger puts uploads it failed on (fixed name, on the trigger's account); made
  // here so the app's queue rights on the data account can be scoped to it.
  blobTriggerPoison: 'webjobs-blobtrigger-poison'
  // Many models: shard work items, their results, and the same two poison queues.
  shards: 'shards'
  shardResults: 'shard-results'
  shardsPoison: 'shards-poison'
  shardResultsPoison: 'shard-results-poison'
}
var taskHub = 'stylize'
var readingsHub = 'readings'
var computeName = 'gpu-cluster'
var componentName = 'stylize_worker'
var cpuComputeName = 'cpu-cluster'
var shardComponentName = 'stylize_shard_worker'
// A worker job waits this long for more batches before it ends; the node then idles for
// gpuIdleSecondsBeforeScaleDown before it is released. Half the node's idle time keeps a warm
// worker (model loaded) for a video that follows soon, and bounds how long a node is held after
// the last batch to 1.5 times gpuIdleSecondsBeforeScaleDown.
var workerIdleSeconds = max(60, gpuIdleSecondsBeforeScaleDown / 2)

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module functionIdentity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-func-${token}'
    location: location
    tags: tags
  }
}

module computeIdentity 'modules/identity.bicep' = {
  name: 'compute-identity'
  scope: rg
  params: {
    name: 'id-gpu-${token}'
    location: location
    tags: tags
  }
}

module cpuIdentity 'modules/identity.bicep' = {
  name: 'cpu-identity'
  scope: rg
  params: {
    name: 'id-cpu-${token}'
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
    containers: [ containers.input, containers.output, containers.work, containers.styles, containers.sensorData, containers.models ]
    queues: [
      queues.batches, queues.results, queues.batchesPoison, queues.resultsPoison, queues.blobTriggerPoison
      queues.shards, queues.shardResults, queues.shardsPoison, queues.shardResultsPoison
    ]
    expiry: [
      { prefix: '${containers.work}/jobs/', days: workRetentionDays }
      { prefix: '${containers.work}/runs/', days: workRetentionDays }
      { prefix: '${containers.output}/status/', days: workRetentionDays }
    ]
  }
}

// The sensors' readings: an Event Hub whose Capture writes Avro files into the sensor-data container.
module eventHubs 'modules/event-hubs.bicep' = {
  name: 'event-hubs'
  scope: rg
  params: {
    name: 'evhns-${token}'
    location: location
    tags: tags
    hubName: readingsHub
    partitionCount: readingsPartitions
    captureIntervalSeconds: captureIntervalSeconds
    dataAccountId: dataStorage.outputs.id
    dataAccountName: dataStorage.outputs.name
    captureContainer: containers.sensorData
  }
}

// The Functions host's own account: deployment package, host keys, Durable task hub. Only the
// Function app's identity has rights on it.
module hostStorage 'modules/storage-account.bicep' = {
  name: 'host-storage'
  scope: rg
  params: {
    name: 'sthost${token}'
    location: location
    tags: tags
    containers: [ containers.deployment ]
  }
}

// The Azure ML workspace's storage (code snapshots, job logs). Its name is kept from the first
// layout, where it also served the Functions host: a workspace's storage cannot change.
module mlStorage 'modules/storage-account.bicep' = {
  name: 'ml-storage'
  scope: rg
  params: {
    name: 'stops${token}'
    location: location
    tags: tags
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
    storageAccountId: mlStorage.outputs.id
    appInsightsId: monitoring.outputs.appInsightsId
  }
}

module compute 'modules/ml-compute.bicep' = {
  name: 'ml-compute'
  scope: rg
  // Azure ML grants the cluster's identity AcrPull on the registry itself when it creates the
  // cluster; made after that, our grant fails with RoleAssignmentExists, made before, it is found.
  dependsOn: [ rbac ]
  params: {
    workspaceName: workspace.outputs.name
    name: computeName
    location: location
    tags: tags
    identityId: computeIdentity.outputs.id
    purpose: 'GPU nodes for stylize worker jobs'
    vmSize: gpuVmSize
    maxNodes: gpuMaxNodes
    lowPriority: gpuLowPriority
    idleSecondsBeforeScaleDown: gpuIdleSecondsBeforeScaleDown
  }
}

module cpuCompute 'modules/ml-compute.bicep' = {
  name: 'ml-cpu-compute'
  scope: rg
  // Azure ML grants the cluster's identity AcrPull on the registry itself when it creates the
  // cluster; made after that, our grant fails with RoleAssignmentExists, made before, it is found.
  dependsOn: [ rbac ]
  params: {
    workspaceName: workspace.outputs.name
    name: cpuComputeName
    location: location
    tags: tags
    identityId: cpuIdentity.outputs.id
    purpose: 'CPU nodes for shard worker jobs (many models)'
    vmSize: cpuVmSize
    maxNodes: cpuMaxNodes
    lowPriority: cpuLowPriority
    idleSecondsBeforeScaleDown: cpuIdleSecondsBeforeScaleDown
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
    identityId: functionIdentity.outputs.id
    identityClientId: functionIdentity.outputs.clientId
    hostAccountName: hostStorage.outputs.name
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
      STYLIZE_STYLES_CONTAINER: containers.styles
      STYLIZE_BATCH_QUEUE: queues.batches
      STYLIZE_RESULT_QUEUE: queues.results
      STYLIZE_DEFAULT_STYLE: defaultStyle
      STYLIZE_BATCH_FRAMES: string(batchFrames)
      STYLIZE_COMPUTE_BACKEND: 'azureml'
      STYLIZE_MAX_WORKERS: string(gpuMaxNodes)
      STYLIZE_WORKER_IDLE_S: string(workerIdleSeconds)
      STYLIZE_AZUREML_SUBSCRIPTION_ID: subscription().subscriptionId
      STYLIZE_AZUREML_RESOURCE_GROUP: rg.name
      STYLIZE_AZUREML_WORKSPACE: workspace.outputs.name
      STYLIZE_AZUREML_COMPUTE: compute.outputs.name
      STYLIZE_AZUREML_COMPONENT: componentName
      STYLIZE_AZUREML_COMPUTE_CLIENT_ID: computeIdentity.outputs.clientId
      STYLIZE_MODELS_SCHEDULE: modelsSchedule
      STYLIZE_MODELS_WINDOW_S: string(modelsWindowSeconds)
      STYLIZE_SENSOR_DATA_CONTAINER: containers.sensorData
      STYLIZE_SENSOR_CAPTURE_PATH: readingsFromCapture ? '${eventHubs.outputs.namespaceName}/${eventHubs.outputs.hubName}' : ''
      STYLIZE_CAPTURE_INTERVAL_S: string(captureIntervalSeconds)
      STYLIZE_MODELS_CONTAINER: containers.models
      STYLIZE_SHARD_QUEUE: queues.shards
      STYLIZE_SHARD_RESULT_QUEUE: queues.shardResults
      STYLIZE_MAX_SHARD_WORKERS: string(cpuMaxNodes)
      STYLIZE_AZUREML_CPU_COMPUTE: cpuCompute.outputs.name
      STYLIZE_AZUREML_SHARD_COMPONENT: shardComponentName
      STYLIZE_AZUREML_CPU_COMPUTE_CLIENT_ID: cpuIdentity.outputs.clientId
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
  }
}

module rbac 'modules/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    dataAccountName: dataStorage.outputs.name
    hostAccountName: hostStorage.outputs.name
    mlAccountName: mlStorage.outputs.name
    inputContainer: containers.input
    outputContainer: containers.output
    workContainer: containers.work
    stylesContainer: containers.styles
    sensorDataContainer: containers.sensorData
    modelsContainer: containers.models
    batchQueue: queues.batches
    resultQueue: queues.results
    batchPoisonQueue: queues.batchesPoison
    resultPoisonQueue: queues.resultsPoison
    blobTriggerPoisonQueue: queues.blobTriggerPoison
    shardQueue: queues.shards
    shardResultQueue: queues.shardResults
    shardPoisonQueue: queues.shardsPoison
    shardResultPoisonQueue: queues.shardResultsPoison
    appInsightsName: monitoring.outputs.appInsightsName
    workspaceName: workspace.outputs.name
    registryName: workspace.outputs.registryName
    functionPrincipalId: functionIdentity.outputs.principalId
    computePrincipalId: computeIdentity.outputs.principalId
    cpuPrincipalId: cpuIdentity.outputs.principalId
    eventHubNamespaceName: eventHubs.outputs.namespaceName
    eventHubName: eventHubs.outputs.hubName
    sensorPrincipalId: sensorPrincipalId
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
output STYLES_CONTAINER string = containers.styles
output DATA_EVENTS_TOPIC string = events.outputs.dataTopicName
output AZUREML_WORKSPACE string = workspace.outputs.name
output AZUREML_COMPUTE string = compute.outputs.name
output AZUREML_COMPONENT string = componentName
output SENSOR_DATA_CONTAINER string = containers.sensorData
output MODELS_CONTAINER string = containers.models
output AZUREML_CPU_COMPUTE string = cpuCompute.outputs.name
output AZUREML_SHARD_COMPONENT string = shardComponentName
output EVENT_HUBS_NAMESPACE string = eventHubs.outputs.fullyQualifiedNamespace
output READINGS_HUB string = eventHubs.outputs.hubName
