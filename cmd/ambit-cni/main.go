// Command ambit-cni is Ambit's CNI plugin, chained after the pod network's
// main plugin. On ADD it records the pod (namespace, name, UID, network
// namespace and IPs from the previous plugin's result) and passes that
// result through unchanged; DEL forgets the pod; CHECK verifies the record.
// The node agent will learn about new pods from it before their process
// starts.
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
	}, cniversion.All, "ambit-cni: records pods for Ambit's node agent")
}
