package main

import "github.com/spf13/cobra"

// newSampleCmd is a placeholder that its owner replaces.
func newSampleCmd() *cobra.Command {
	return &cobra.Command{Use: "sample", Hidden: true}
}
