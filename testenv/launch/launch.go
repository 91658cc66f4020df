// Package launch runs the real `trireme daemon` for the tests (testenv),
// the demo and perf: one implementation of writing a node's config
// (node.Config.Marshal), starting the binary in a network namespace,
// waiting until its control API answers, stopping it and keeping its log.
// It has no testing dependency, so the demo and perf use it as they are.
package launch

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/node"
)

// Daemon is one node's daemon: its config on disk and, while started, its
// process. Start it again after Stop (a restart) with the same config.
type Daemon struct {
	Binary     string       // the trireme binary
	Netns      string       // namespace name (under netsetup.NetnsDir) or path; "": the caller's
	Config     *node.Config // what ConfigPath holds
	ConfigPath string
	Args       []string // more daemon flags, e.g. --log-level debug
	Env        []string // more environment variables (KEY=value), e.g. NOTIFY_SOCKET
	// LogPath receives the daemon's output, appended across restarts;
	// Log, when not nil, receives it too.
	LogPath string
	Log     io.Writer
	// ReadyTimeout bounds Start's wait (default 30 s); Ready says when the
	// daemon is ready (default: its control API answers).
	ReadyTimeout time.Duration
	Ready        func(*node.Client) error

	mu   sync.Mutex
	proc *Process
}

// Write writes cfg to dir/config.yaml (Config.Marshal) and returns the
// daemon that runs it, its log in dir/daemon.log.
func Write(dir, binary string, cfg *node.Config) (*Daemon, error) {
	data, err := cfg.Marshal()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return nil, err
	}
	return &Daemon{Binary: binary, Config: cfg, ConfigPath: path, LogPath: filepath.Join(dir, "daemon.log")}, nil
}

// Client returns a control API client of the daemon.
func (d *Daemon) Client() *node.Client {
	if d.Config.Socket == "" {
		return node.NewClient(node.DefaultSocket)
	}
	return node.NewClient(d.Config.Socket)
}

// Start starts the daemon in its namespace and waits until it is ready. A
// daemon that exits or is not ready in time is an error naming the end of
// its log (and is killed).
func (d *Daemon) Start(ctx context.Context) error {
	d.mu.Lock()
	if d.proc != nil && !d.proc.exited() {
		d.mu.Unlock()
		return fmt.Errorf("launch: the daemon of %s is already running (pid %d)", d.ConfigPath, d.proc.cmd.Process.Pid)
	}
	d.mu.Unlock()
	p, err := d.spawn()
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.proc = p
	d.mu.Unlock()
	if err := d.waitReady(ctx, p); err != nil {
		p.stop(syscall.SIGKILL, 0)
		return err
	}
	return nil
}

func (d *Daemon) spawn() (*Process, error) {
	var out io.Writer = io.Discard
	var logf *os.File
	if d.LogPath != "" {
		f, err := os.OpenFile(d.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, err
		}
		logf, out = f, f
	}
	if d.Log != nil {
		if logf == nil {
			out = d.Log
		} else {
			out = io.MultiWriter(logf, d.Log)
		}
	}
	cmd := exec.Command(d.Binary, append([]string{"daemon", "--config", d.ConfigPath}, d.Args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	if len(d.Env) > 0 {
		cmd.Env = append(os.Environ(), d.Env...)
	}
	// Own process group: a terminal's ^C reaches the caller only, which
	// stops the daemon in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p, err := StartIn(d.Netns, cmd)
	if logf != nil {
		if err != nil {
			logf.Close()
		} else {
			// Written by cmd's copying goroutine (when Log is set) until
			// Wait returns.
			go func() { <-p.done; logf.Close() }()
		}
	}
	return p, err
}

// Process is a process started by StartIn.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // the exit status, once done is closed
}

// StartIn starts cmd in a network namespace (a name under
// netsetup.NetnsDir or a path; "" for the caller's), on a goroutine locked
// to an OS thread switched into it with netsetup.EnterNetns: a child
// inherits the forking thread's namespace. The thread stays there until
// the process exits, because Pdeathsig fires when the forking thread (not
// the process) ends: a process with Pdeathsig never outlives its caller
// and never dies because the Go runtime retired a thread.
func StartIn(netns string, cmd *exec.Cmd) (*Process, error) {
	p := &Process{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		leave := func() error { return nil }
		if netns != "" {
			ns, err := netsetup.OpenNetnsPath(netns)
			if err != nil {
				started <- err
				return
			}
			leave, err = netsetup.EnterNetns(ns)
			ns.Close()
			if err != nil {
				started <- err
				return
			}
		}
		if err := cmd.Start(); err != nil {
			leave()
			started <- fmt.Errorf("launch: start %s: %w", cmd.Path, err)
			return
		}
		started <- nil
		p.err = cmd.Wait()
		leave()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is cmd.Wait's result, once Done is closed.
func (p *Process) Err() error { <-p.done; return p.err }

// PID is the process ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

func (d *Daemon) waitReady(ctx context.Context, p *Process) error {
	limit := d.ReadyTimeout
	if limit <= 0 {
		limit = 30 * time.Second
	}
	ready := d.Ready
	if ready == nil {
		ready = func(c *node.Client) error { _, err := c.Stats(); return err }
	}
	c := d.Client()
	deadline := time.Now().Add(limit)
	for {
		err := ready(c)
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("launch: daemon exited: %v (at start); end of its log:\n%s", p.err, d.LogTail(20))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("launch: control API not ready after %v (%v); end of its log:\n%s", limit, err, d.LogTail(20))
		}
	}
}

// Stop sends sig and waits up to grace for the daemon to exit, then kills
// it; it reports a daemon that had to be killed. A daemon not running is
// no error.
func (d *Daemon) Stop(sig syscall.Signal, grace time.Duration) error {
	d.mu.Lock()
	p := d.proc
	d.mu.Unlock()
	if p == nil || p.exited() {
		return nil
	}
	if !p.stop(sig, grace) {
		return fmt.Errorf("launch: the daemon (pid %d) did not stop on %v within %v: killed", p.cmd.Process.Pid, sig, grace)
	}
	return nil
}

// Kill stops the daemon with SIGKILL (a crash).
func (d *Daemon) Kill() { d.Stop(syscall.SIGKILL, 10*time.Second) }

// stop signals the process and waits up to grace; false if it had to be
// killed.
func (p *Process) stop(sig syscall.Signal, grace time.Duration) bool {
	p.cmd.Process.Signal(sig)
	if sig == syscall.SIGKILL {
		<-p.done
		return true
	}
	select {
	case <-p.done:
		return true
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
		return false
	}
}

func (p *Process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// PID is the daemon's process ID (0 when it is not running).
func (d *Daemon) PID() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.proc == nil || d.proc.exited() {
		return 0
	}
	return d.proc.cmd.Process.Pid
}

// Done is closed when the running daemon exits (nil if never started).
func (d *Daemon) Done() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.proc == nil {
		return nil
	}
	return d.proc.done
}

// ExitErr is how the last process ended (nil while it runs or on exit 0).
func (d *Daemon) ExitErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.proc == nil || !d.proc.exited() {
		return nil
	}
	return d.proc.err
}

// Logs returns the daemon's log so far (LogPath).
func (d *Daemon) Logs() string {
	if d.LogPath == "" {
		return ""
	}
	b, _ := os.ReadFile(d.LogPath)
	return string(b)
}

// LogTail returns the last n lines of the log.
func (d *Daemon) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(d.Logs(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
