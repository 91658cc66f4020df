package main

import (
	"bytes"
	"testing"

	"github.com/spf13/cobra"
)

// execCommand executes a fresh subcommand with args and returns what it
// printed (stdout and stderr together) and its error.
func execCommand(t *testing.T, cmd *cobra.Command, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}
