// The sensors' readings: an Event Hubs namespace and hub, with Event Hubs Capture writing every
// event, as Avro files, into the data account's sensor-data container (Capture's own layout:
// {Namespace}/{EventHub}/{PartitionId}/{Year}/{Month}/{Day}/{Hour}/{Minute}/{Second}.avro), as the
// namespace's system-assigned identity. Its grant (Storage Blob Data Contributor on that container) is made here,
// between the namespace and the hub: Capture's destination must hold the role before Capture is enabled, and the
// namespace's identity exists only once the namespace does. No keys: local (SAS) authentication is off; senders hold
// Azure Event Hubs Data Sender (rbac.bicep).
param name string
param location string
param tags object
param hubName string
@description('Partitions of the hub: the most readers at once, and the most files Capture writes per interval.')
param partitionCount int
@description('Capture writes a partition\'s file every this many seconds (60 to 900), or sooner at the size limit.')
param captureIntervalSeconds int
param dataAccountId string
param dataAccountName string
param captureContainer string

var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource dataAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: dataAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: dataAccount
  name: 'default'
}

resource captureTarget 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: captureContainer
}

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: name
  location: location
  tags: tags
  // Standard: the lowest tier with Capture (charged per throughput unit and hour on Standard).
  sku: { name: 'Standard', tier: 'Standard', capacity: 1 }
  identity: { type: 'SystemAssigned' }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    isAutoInflateEnabled: false
  }
}

resource captureGrant 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: captureTarget
  name: guid(captureTarget.id, namespace.id, storageBlobDataContributor)
  properties: {
    principalId: namespace.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
  }
}

resource hub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: hubName
  dependsOn: [ captureGrant ]
  properties: {
    partitionCount: partitionCount
    messageRetentionInDays: 1
    captureDescription: {
      enabled: true
      encoding: 'Avro'
      intervalInSeconds: captureIntervalSeconds
      sizeLimitInBytes: 314572800
      skipEmptyArchives: true
      destination: {
        name: 'EventHubArchive.AzureBlockBlob'
        identity: { type: 'SystemAssigned' }
        properties: {
          storageAccountResourceId: dataAccountId
          blobContainer: captureContainer
          archiveNameFormat: '{Namespace}/{EventHub}/{PartitionId}/{Year}/{Month}/{Day}/{Hour}/{Minute}/{Second}'
        }
      }
    }
  }
}

output namespaceName string = namespace.name
output hubName string = hub.name
output fullyQualifiedNamespace string = '${namespace.name}.servicebus.windows.net'
