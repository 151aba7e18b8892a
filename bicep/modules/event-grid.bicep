// Event Grid system topics: blob events of the data account, and run events of the Azure ML
// workspace. Their subscriptions point at functions and so are made after deployment, by the azd
// post-deploy hook (deploy/postdeploy.py): blob-trigger webhooks carry the deployed app's
// blobs_extension key, which a template cannot read without listKeys.
param location string
param tags object
param dataAccountId string
param dataTopicName string
param workspaceId string
param workspaceTopicName string

resource dataTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: dataTopicName
  location: location
  tags: tags
  properties: {
    source: dataAccountId
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

resource workspaceTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: workspaceTopicName
  location: location
  tags: tags
  properties: {
    source: workspaceId
    topicType: 'Microsoft.MachineLearningServices.Workspaces'
  }
}

output dataTopicName string = dataTopic.name
output workspaceTopicName string = workspaceTopic.name
