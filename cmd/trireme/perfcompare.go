package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/trireme-go/trireme/perf"
)

// perfFileCmds are the perf subcommands that read saved --json results
// instead of measuring: a run's table, and two runs side by side.
func perfFileCmds() []*cobra.Command {
	show := &cobra.Command{
		Use:   "show RESULT.json",
		Short: "Print a comparison run saved with --json as its table",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := readPerfResult(args[0])
			if err != nil {
				return err
			}
			return res.WriteTable(cmd.OutOrStdout())
		},
	}
	var markdown bool
	compare := &cobra.Command{
		Use:   "compare BEFORE.json AFTER.json",
		Short: "Print two comparison runs saved with --json side by side (before → after a change)",
		Long: `compare prints, for every figure and variant, the headline of each run —
the ratio to the kernel path, the latency added to it, or the enforcer's own
figure (CPU, RSS) — as "before → after". Both runs must be of one topology
(e.g. trireme perf --json --daemon-binary OLD > before.json, then with the new
binary > after.json). The runs' own medians are compared; on a noisy machine
run each more than once before reading a difference.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			before, err := readPerfResult(args[0])
			if err != nil {
				return err
			}
			after, err := readPerfResult(args[1])
			if err != nil {
				return err
			}
			if err := perf.WriteComparison(cmd.OutOrStdout(), before, after, markdown); err != nil {
				return &exitError{code: 2, err: err}
			}
			return nil
		},
	}
	compare.Flags().BoolVar(&markdown, "markdown", false, "print a Markdown table")
	return []*cobra.Command{show, compare}
}

// readPerfResult reads a saved result; a file that is not one is a usage
// error (exit 2).
func readPerfResult(path string) (*perf.Result, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &exitError{code: 2, err: err}
	}
	defer f.Close()
	res, err := perf.ReadResult(f, path)
	if err != nil {
		return nil, &exitError{code: 2, err: err}
	}
	return res, nil
}
