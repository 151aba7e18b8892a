// The GPU cluster the batch jobs run on. It scales from 0 nodes, so it costs nothing while idle,
// and back to 0 after the idle time; low-priority nodes are cheaper and may be pre-empted (the
// orchestrator resubmits a batch whose job fails). Its system-assigned identity reads segments and
// writes styled segments (see rbac.bicep).
param workspaceName string
param name string
param location string
param tags object
param vmSize string
param maxNodes int
param lowPriority bool
param idleSecondsBeforeScaleDown int

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' existing = {
  name: workspaceName
}

resource cluster 'Microsoft.MachineLearningServices/workspaces/computes@2024-10-01' = {
  parent: workspace
  name: name
  location: location
  tags: tags
  identity: { type: 'SystemAssigned' }
  properties: {
    computeType: 'AmlCompute'
    description: 'GPU nodes for stylize batch jobs'
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
output principalId string = cluster.identity.principalId
