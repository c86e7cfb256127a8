package main

import "github.com/spf13/cobra"

// newLocalCmd is a placeholder that its owner replaces.
func newLocalCmd() *cobra.Command {
	return &cobra.Command{Use: "local", Hidden: true}
}
