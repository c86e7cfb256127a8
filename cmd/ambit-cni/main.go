// Command ambit-cni is Ambit's CNI plugin, chained after the pod network's
// main plugin. On ADD it tells the node agent about the pod (namespace,
// name, UID, network namespace and IPs from the previous plugin's result)
// and waits for the agent to enroll it before the pod's process starts;
// it fails, so the pod does not start, when the agent cannot be reached
// or cannot enroll a pod that belongs in the mesh. It passes the previous
// result through unchanged. With a state directory it also records pods
// (local mode); DEL forgets them, CHECK verifies the record.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	cniversion "github.com/containernetworking/cni/pkg/version"

	"github.com/ambit-mesh/ambit/cniplugin"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:   cniplugin.Add,
		Del:   cniplugin.Del,
		Check: cniplugin.Check,
	}, cniversion.All, "ambit-cni: enrolls pods with Ambit's node agent before they start")
}
