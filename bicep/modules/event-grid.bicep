// The Event Grid system topic of the data account. Its subscription points at the upload function
// and so is made after deployment, by the azd post-deploy hook (deploy/postdeploy.py): a blob
// trigger's webhook carries the deployed app's blobs_extension key, which a template cannot read
// without listKeys. Delivery is by webhook, so the topic needs no identity and no role.
param location string
param tags object
param dataAccountId string
param dataTopicName string

resource dataTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: dataTopicName
  location: location
  tags: tags
  properties: {
    source: dataAccountId
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output dataTopicName string = dataTopic.name
