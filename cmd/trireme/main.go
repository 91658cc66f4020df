// Command trireme is the one binary of the project: the node daemon, the
// policy tools, pcap replay, the PKI helper and the perf harness, as cobra
// subcommands. Each subcommand lives in its own file and registers itself
// with rootCmd in an init function.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

var rootCmd = &cobra.Command{
	Use:           "trireme",
	Short:         "Zero-trust, identity-based network policy for workloads",
	SilenceUsage:  true,
	SilenceErrors: true,
}

// exitError carries a process exit code through cobra (e.g. `policy check`
// exits 1 on an invalid file, `trireme run` passes its child's code through).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func main() {
	err := rootCmd.Execute()
	if err == nil {
		return
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(os.Stderr, "trireme:", ee.err)
		}
		os.Exit(ee.code)
	}
	fmt.Fprintln(os.Stderr, "trireme:", err)
	os.Exit(1)
}
