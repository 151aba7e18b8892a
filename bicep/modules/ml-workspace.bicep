// The Azure ML workspace and what it requires: a key vault (RBAC mode), a container registry for the
// environment image (admin user off) and its own storage account, reached with identities because
// that account accepts no shared key. systemDatastoresAuthMode is in the workspace schema of the
// stable API 2025-09-01 (not of 2024-10-01, which would silently drop it and leave the system
// datastores on account keys); the post-deploy hook checks the workspace reports it.
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

resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-09-01' = {
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
    systemDatastoresAuthMode: 'Identity'
    publicNetworkAccess: 'Enabled'
    v1LegacyMode: false
  }
}

output id string = workspace.id
output name string = workspace.name
output registryName string = registry.name
