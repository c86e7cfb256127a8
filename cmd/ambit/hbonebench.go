package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/ambit-mesh/ambit/hbone/hbonebench"
)

func newHBONEBenchCmd() *cobra.Command {
	var o hbonebench.Options
	cmd := &cobra.Command{
		Use:   "hbone-bench",
		Short: "Measure HBONE against plain TCP and a TLS 1.3 proxy on loopback (throughput, CPU, 1-byte RTT, allocations)",
		Long: `hbone-bench runs, in this process and over loopback, an upstream sink and echo server,
a TLS 1.3 terminating proxy and an HBONE server with an HBONE client pool, and measures
one stream per path: throughput (writes of --size bytes for --duration), the process CPU
and heap allocations it costs, and the median and 99th percentile of a one-byte round trip.
Paths alternate within each of --rounds rounds; each figure is the median over rounds.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Rounds < 1 || o.Duration <= 0 || o.Size < 1 {
				return fmt.Errorf("--rounds, --duration and --size must be positive")
			}
			e, err := hbonebench.Start()
			if err != nil {
				return err
			}
			defer e.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "HBONE vs TLS 1.3 vs TCP on loopback: %d rounds of %s per measurement, %d-byte writes; medians over rounds\n",
				o.Rounds, o.Duration, o.Size)
			res, err := hbonebench.Run(cmd.Context(), e, o)
			if err != nil {
				return err
			}
			fmt.Fprint(cmd.OutOrStdout(), hbonebench.Table(res))
			return nil
		},
	}
	cmd.Flags().DurationVar(&o.Duration, "duration", time.Second, "length of each measurement")
	cmd.Flags().IntVar(&o.Rounds, "rounds", 3, "rounds (paths alternate within each round)")
	cmd.Flags().IntVar(&o.Size, "size", 64<<10, "write size for the throughput test, bytes")
	return cmd
}
