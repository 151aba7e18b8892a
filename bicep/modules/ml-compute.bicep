// A cluster worker jobs run on: the GPU cluster (video batches) and the CPU cluster (model shards).
// It scales from 0 nodes, so it costs nothing while idle, and back to 0 after the idle time;
// low-priority nodes are cheaper and may be pre-empted (the items a pre-empted worker held are
// redelivered by the queue). It runs as a user-assigned
// identity (identity.bicep): the default identity of a cluster with one user-assigned identity is
// that identity, used to pull the image and reach the workspace storage, and the client id a job
// passes to azure-identity (Azure ML also sets it as DEFAULT_IDENTITY_CLIENT_ID; "Set up
// authentication between Azure Machine Learning and other services", compute cluster section).
param workspaceName string
param name string
param location string
param tags object
param identityId string
@description('What the nodes are for: the description of the cluster.')
param purpose string
param vmSize string
param maxNodes int
param lowPriority bool
param idleSecondsBeforeScaleDown int

resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-09-01' existing = {
  name: workspaceName
}

resource cluster 'Microsoft.MachineLearningServices/workspaces/computes@2025-09-01' = {
  parent: workspace
  name: name
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {} }
  }
  properties: {
    computeType: 'AmlCompute'
    description: purpose
    properties: {
      vmSize: vmSize
      vmPriority: lowPriority ? 'LowPriority' : 'Dedicated'
      osType: 'Linux'
      scaleSettings: {
        minNodeCount: 0
        maxNodeCount: maxNodes
        nodeIdleTimeBeforeScaleDown: 'PT${idleSecondsBeforeScaleDown}S'
      }
      remoteLoginPortPublicAccess: 'Disabled'
    }
  }
}

output name string = cluster.name
