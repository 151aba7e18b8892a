// The Function app on the Flex Consumption plan (Python 3.11), running as a user-assigned identity.
// The host's storage (AzureWebJobsStorage: deployment package, host keys, Durable task hub) is an
// account of its own that no Azure ML identity can touch; every connection (host storage, data
// storage, Azure ML, Application Insights) is identity-based.
param planName string
param appName string
param location string
param tags object
param identityId string
param identityClientId string
param hostAccountName string
param deploymentContainer string
param dataBlobEndpoint string
param dataQueueEndpoint string
param appInsightsConnectionString string
param maximumInstanceCount int
param instanceMemoryMB int
@description('STYLIZE_* settings of the app (see shared/config.py), as name/value pairs.')
param stylizeSettings object

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: { name: 'FC1', tier: 'FlexConsumption' }
  properties: { reserved: true }
}

resource hostAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: hostAccountName
}

var baseSettings = {
  AzureWebJobsStorage__accountName: hostAccount.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  DataStorage__blobServiceUri: dataBlobEndpoint
  DataStorage__queueServiceUri: dataQueueEndpoint
  DataStorage__credential: 'managedidentity'
  DataStorage__clientId: identityClientId
  AZURE_CLIENT_ID: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  PYTHON_SCRIPT_FILE_NAME: 'stylize_functions.py'
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  tags: union(tags, { 'azd-service-name': 'functions' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      appSettings: [for setting in items(union(baseSettings, stylizeSettings)): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostAccount.properties.primaryEndpoints.blob}${deploymentContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: { name: 'python', version: '3.11' }
    }
  }
}

resource basicPublishingCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'scm'
  properties: { allow: false }
}

output id string = app.id
output name string = app.name
output defaultHostName string = app.properties.defaultHostName
