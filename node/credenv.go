package node

import "github.com/sluicehq/sluice/policy"

// CredentialEnv names the environment variables the policy in force reads
// credentials from: a command the node starts for the workload (sluice
// run) must not inherit them, or the workload would hold the secrets
// Sluice keeps from it.
func (n *Node) CredentialEnv() []string {
	if e, ok := n.policy.Load().(*policy.Engine); ok {
		return e.Credentials().Env()
	}
	return nil
}
