// A user-assigned identity: one for the Function app, one for the GPU cluster. Being created before
// what uses it, its principal is known early, so every role assignment (rbac.bicep) depends on this
// module only, and no key or connection secret exists anywhere.
param name string
param location string
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
