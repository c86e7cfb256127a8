package main

import "github.com/spf13/cobra"

// newHBONEBenchCmd is a placeholder that its owner replaces.
func newHBONEBenchCmd() *cobra.Command {
	return &cobra.Command{Use: "hbone-bench", Hidden: true}
}
