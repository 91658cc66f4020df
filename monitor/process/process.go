// Package process runs commands inside a PU's network namespace: the part
// of `trireme run` that does not need the daemon. The CLI asks the daemon
// for a PU namespace on the node bridge (CreatePU), runs the command in it
// with Run, whose output goes straight to the CLI's own stdout/stderr, and
// asks the daemon to tear the PU down with the exit code in hand.
package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// Start starts cmd with its network namespace set to the one at nsPath
// (e.g. /var/run/netns/NAME or /proc/PID/ns/net). Only the network
// namespace changes: the mount namespace is the caller's, so /sys shows
// the caller's devices (unlike `ip netns exec`, which remounts it).
//
// The child inherits the namespace of the OS thread that forks it, so the
// fork happens on a locked thread switched into nsPath and back; a thread
// that cannot be switched back is never reused (it stays locked and exits
// with its goroutine).
func Start(nsPath string, cmd *exec.Cmd) error {
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", nsPath, err)
			return
		}
		serr := cmd.Start()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(serr, fmt.Errorf("restore netns: %w", err)) // thread stays locked: discarded
			return
		}
		runtime.UnlockOSThread()
		errc <- serr
	}()
	return <-errc
}

// The child stays in the caller's process group, so a terminal's ^C or ^\
// (sent to the whole foreground group) reaches it directly, and it can use
// the terminal. Run catches SIGINT and SIGQUIT without passing them on (the
// child got its own copy) so that the CLI outlives the child and can tear
// the PU down; SIGTERM and SIGHUP, which target the CLI alone (kill, a
// closed session), are forwarded.
var (
	caught    = []os.Signal{syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGHUP}
	forwarded = map[os.Signal]bool{syscall.SIGTERM: true, syscall.SIGHUP: true}
)

// KillGrace is how long Run waits after SIGTERM (ctx done) before SIGKILL.
const KillGrace = 5 * time.Second

// Run starts cmd in the namespace at nsPath (see Start), passes signals on
// as described above, and waits. It returns the exit code
// as a shell reports it: the command's status, or 128+N when signal N
// killed it. err is non-nil only when the command could not be run at all.
// When ctx ends, the command gets SIGTERM, then SIGKILL after KillGrace.
func Run(ctx context.Context, nsPath string, cmd *exec.Cmd) (int, error) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, caught...)
	defer signal.Stop(sigs)
	if err := Start(nsPath, cmd); err != nil {
		return 0, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var kill <-chan time.Time
	ctxDone := ctx.Done()
	for {
		select {
		case s := <-sigs:
			if forwarded[s] {
				cmd.Process.Signal(s)
			}
		case <-ctxDone:
			ctxDone = nil
			cmd.Process.Signal(syscall.SIGTERM)
			kill = time.After(KillGrace)
		case <-kill:
			cmd.Process.Kill()
		case err := <-done:
			return ExitCode(cmd.ProcessState, err)
		}
	}
}

// ExitCode turns a finished process's state into a shell-style exit code.
func ExitCode(ps *os.ProcessState, waitErr error) (int, error) {
	if ps == nil {
		return 0, waitErr
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), nil
	}
	return ps.ExitCode(), nil
}
