package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/ambit-mesh/ambit/hbone/hbonebench"
)

func newHBONEBenchCmd() *cobra.Command {
	var duration time.Duration
	var rounds, chunk int
	cmd := &cobra.Command{
		Use:   "hbone-bench",
		Short: "Measure HBONE against plain TCP and a TLS 1.3 proxy on loopback (throughput, 1-byte RTT)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rounds < 1 || duration <= 0 || chunk < 1 {
				return fmt.Errorf("--rounds, --duration and --chunk must be positive")
			}
			e, err := hbonebench.Start()
			if err != nil {
				return err
			}
			defer e.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "HBONE vs TLS 1.3 vs TCP on loopback: %d rounds of %s per measurement, interleaved; medians over rounds\n", rounds, duration)
			res, err := hbonebench.Run(cmd.Context(), e, rounds, duration, chunk)
			if err != nil {
				return err
			}
			fmt.Fprint(cmd.OutOrStdout(), hbonebench.Table(res))
			return nil
		},
	}
	cmd.Flags().DurationVar(&duration, "duration", time.Second, "length of each measurement")
	cmd.Flags().IntVar(&rounds, "rounds", 5, "rounds (paths alternate within each round)")
	cmd.Flags().IntVar(&chunk, "chunk", 64<<10, "write size for the throughput test, bytes")
	return cmd
}
