// Command ambit-ztunnel is the node proxy alone: the same command as
// `ambit ztunnel`, in a binary that links only what the data plane needs,
// so a ztunnel on every node maps half the code of the multi-call binary.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ambit-mesh/ambit/cmd/internal/ztunnelcmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := ztunnelcmd.New()
	cmd.Use = "ambit-ztunnel"
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "ambit-ztunnel:", err)
		os.Exit(1)
	}
}
