package main

import "github.com/spf13/cobra"

// newControlPlaneCmd is a placeholder that its owner replaces.
func newControlPlaneCmd() *cobra.Command {
	return &cobra.Command{Use: "controlplane", Hidden: true}
}
