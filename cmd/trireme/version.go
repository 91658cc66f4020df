package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/trireme-go/trireme/buildinfo"
)

func init() {
	var asJSON bool
	version := &cobra.Command{
		Use:   "version [--json]",
		Short: "Print the version, the commit it was built from and the Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if asJSON {
				return printJSON(buildinfo.Get())
			}
			fmt.Fprintln(cmd.OutOrStdout(), buildinfo.Get())
			return nil
		},
	}
	version.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	rootCmd.AddCommand(version)
	// trireme --version: the same line.
	rootCmd.Version = buildinfo.Get().Version
	rootCmd.SetVersionTemplate(buildinfo.Get().String() + "\n")
}
