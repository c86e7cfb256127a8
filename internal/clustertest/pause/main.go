// Command pause is the cluster tier's stand-in for registry.k8s.io/pause:
// a pod sandbox's first process. It sleeps until SIGINT or SIGTERM and
// reaps zombies. The harness (internal/clustertest) builds it statically
// and imports it into containerd under the tag the kubelet asks for.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 4)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range c {
		if s == syscall.SIGCHLD {
			for {
				var ws syscall.WaitStatus
				if pid, _ := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
