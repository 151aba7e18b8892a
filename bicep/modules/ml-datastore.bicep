// The data account's work container as an Azure ML datastore without stored credentials: jobs reach
// it with the compute cluster's identity, and the studio with the workspace's.
param workspaceName string
param name string
param accountName string
param containerName string

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' existing = {
  name: workspaceName
}

resource datastore 'Microsoft.MachineLearningServices/workspaces/datastores@2024-10-01' = {
  parent: workspace
  name: name
  properties: {
    datastoreType: 'AzureBlob'
    accountName: accountName
    containerName: containerName
    endpoint: environment().suffixes.storage
    protocol: 'https'
    credentials: { credentialsType: 'None' }
    serviceDataAccessAuthIdentity: 'WorkspaceSystemAssignedIdentity'
  }
}

output name string = datastore.name
