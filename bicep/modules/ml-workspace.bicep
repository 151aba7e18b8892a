// The Azure ML workspace and what it requires: a key vault (RBAC mode), a container registry for the
// environment image (admin user off) and, as its storage, the operations account, reached with
// identities (systemDatastoresAuthMode) because that account accepts no shared key.
param workspaceName string
param keyVaultName string
param registryName string
param location string
param tags object
param storageAccountId string
param appInsightsId string

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    publicNetworkAccess: 'Enabled'
  }
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: registryName
  location: location
  tags: tags
  sku: { name: 'Basic' }
  properties: { adminUserEnabled: false }
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' = {
  name: workspaceName
  location: location
  tags: tags
  identity: { type: 'SystemAssigned' }
  sku: { name: 'Basic', tier: 'Basic' }
  properties: {
    friendlyName: workspaceName
    storageAccount: storageAccountId
    keyVault: keyVault.id
    containerRegistry: registry.id
    applicationInsights: appInsightsId
    systemDatastoresAuthMode: 'identity'
    publicNetworkAccess: 'Enabled'
    v1LegacyMode: false
  }
}

output id string = workspace.id
output name string = workspace.name
output principalId string = workspace.identity.principalId
output registryName string = registry.name
