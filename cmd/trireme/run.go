package main

// `trireme run`: the process monitor. The daemon creates a PU namespace on
// the node bridge (CreatePU); the CLI runs the command in it itself, so its
// output, input and exit code are the CLI's; the PU is removed when the
// command ends, however it ends (DetachPU).

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/trireme-go/trireme/monitor/process"
	"github.com/trireme-go/trireme/node"
)

// Exit codes of `trireme run` itself, in the shell's convention, so that
// they do not look like the command's own.
const (
	runExitNotFound = 127 // the command does not exist
	runExitCannot   = 126 // the command or its PU could not be started
)

func init() { rootCmd.AddCommand(runCommand()) }

func runCommand() *cobra.Command {
	var labels []string
	var name, socket string
	cmd := &cobra.Command{
		Use:   "run [--label k=v]... [--name N] -- CMD [ARGS...]",
		Short: "Run a command as a policed PU (a new namespace on the node bridge)",
		Long: `Asks the daemon for a new PU namespace on the node bridge with the given
labels, runs CMD in it (stdin, stdout and stderr are this command's), and
removes the PU when CMD exits. The exit code is CMD's (128+N when signal N
killed it); 127 when CMD is not found, 126 when the PU or the command could
not be started. SIGINT, SIGTERM, SIGHUP and SIGQUIT are passed on to CMD
(from a terminal, ^C reaches CMD directly). The environment of CMD gains
TRIREME_PU (the PU ID) and TRIREME_PU_IP.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := labelMap(labels)
			if err != nil {
				return &exitError{code: runExitCannot, err: err}
			}
			if name == "" {
				name = defaultRunName(args[0], os.Getpid())
			}
			return runPU(node.NewClient(socket), name, m, args)
		},
	}
	// Everything after CMD belongs to CMD, with or without "--".
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().StringArrayVarP(&labels, "label", "l", nil, "identity label key=value (repeatable)")
	cmd.Flags().StringVar(&name, "name", "", "PU name, [a-z0-9-] (default: the command's name and this process's PID)")
	cmd.Flags().StringVar(&socket, "socket", node.DefaultSocket, "daemon control socket")
	return cmd
}

// defaultRunName makes a PU name from the command and the PID: lowercase,
// [a-z0-9-], at most 32 characters.
func defaultRunName(command string, pid int) string {
	base := strings.ToLower(command[strings.LastIndexByte(command, '/')+1:])
	var b strings.Builder
	for _, r := range base {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "-"):
			b.WriteByte('-')
		}
	}
	suffix := fmt.Sprintf("-%d", pid)
	s := strings.Trim(b.String(), "-")
	if max := 32 - len(suffix); len(s) > max {
		s = strings.TrimRight(s[:max], "-")
	}
	if s == "" {
		s = "run"
	}
	return s + suffix
}

// runPU creates the PU, runs the command in it and removes the PU.
func runPU(c *node.Client, name string, labels map[string]string, args []string) error {
	path, err := exec.LookPath(args[0])
	if err != nil {
		return &exitError{code: runExitNotFound, err: err}
	}
	// Signals are caught before the PU exists: a signal that arrives
	// between CreatePU and the command's start must not leave the PU behind.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)

	pu, err := c.CreatePU(node.CreateRequest{Name: name, Labels: labels})
	if err != nil {
		return &exitError{code: runExitCannot, err: fmt.Errorf("creating PU %s: %w", name, err)}
	}
	code, runErr := runInPU(pu, path, args, sigs)
	if err := c.DetachPU(pu.ID); err != nil {
		derr := fmt.Errorf("removing PU %s: %w", pu.ID, err)
		if runErr != nil {
			derr = errors.Join(runErr, derr)
		}
		if code == 0 {
			code = 1 // a PU left behind is a failure the caller must see
		}
		return &exitError{code: code, err: derr}
	}
	if runErr != nil {
		return &exitError{code: runExitCannot, err: runErr}
	}
	if code != 0 {
		return &exitError{code: code}
	}
	return nil
}

// runInPU starts the command in the PU's namespace, passes signals on and
// returns its shell-style exit code.
func runInPU(pu node.PUInfo, path string, args []string, sigs <-chan os.Signal) (int, error) {
	select {
	case s := <-sigs:
		return 128 + int(s.(syscall.Signal)), nil // asked to stop before the command started
	default:
	}
	cmd := exec.Command(path, args[1:]...)
	cmd.Args[0] = args[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "TRIREME_PU="+pu.ID)
	if len(pu.IPs) > 0 {
		cmd.Env = append(cmd.Env, "TRIREME_PU_IP="+pu.IPs[0].String())
	}
	// From a terminal the command stays in our process group, so that it
	// can use the terminal and gets ^C and ^\ from it directly: we do not
	// pass those on (it would get them twice). Otherwise it gets its own
	// group, and every signal reaches it through us, exactly once.
	// If we die without a chance to pass a signal on (SIGKILL), the
	// command gets SIGTERM rather than running on after its PU's owner.
	tty := isTerminal(os.Stdin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: !tty, Pdeathsig: syscall.SIGTERM}
	if err := process.Start(pu.NetNS, cmd); err != nil {
		return 0, fmt.Errorf("starting %s in PU %s: %w", args[0], pu.ID, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			if tty && (s == syscall.SIGINT || s == syscall.SIGQUIT) {
				continue
			}
			_ = cmd.Process.Signal(s)
		case err := <-done:
			return process.ExitCode(cmd.ProcessState, err)
		}
	}
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
