// Package dockerd runs a private Docker engine: its own containerd and
// dockerd with state, exec root, sockets, pidfile and logs in one
// directory, optionally inside a network namespace, containers on an
// existing bridge, and no iptables rules, sysctl changes or NAT anywhere.
// Images are imported (FROM scratch, holding one static binary), never
// pulled. The live demo and the tests' dockerenv both run one.
//
// Docker 20.10 writes /etc/docker/key.json and makes /run/docker/plugins
// whatever its flags say; Close removes them again when Start found them
// missing.
package dockerd

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/moby/moby/client"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Options say where the engine keeps its state and attaches containers.
type Options struct {
	// Dir holds the engine's state, exec root, sockets, pidfile and logs
	// (containerd.log, dockerd.log). It is made if missing; the caller
	// removes it after Close. Keep it short: unix socket paths are limited
	// to 108 bytes.
	Dir string
	// Netns, when set, is a network namespace (a name under /run/netns, or
	// a path) that containerd and dockerd run in: the bridge, the
	// containers' veths and everything dockerd does to the network are
	// there. Only the network namespace changes (the mount namespace is the
	// caller's, so Close sees the engine's mounts).
	Netns string
	// Bridge is the existing bridge (in Netns) containers attach to; its
	// first IPv4 address is their gateway.
	Bridge string
	// FixedCIDR, when valid, restricts container addresses to a part of
	// the bridge's subnet (dockerd --fixed-cidr).
	FixedCIDR netip.Prefix
}

// Engine is a running private containerd + dockerd.
type Engine struct {
	opts    Options
	host    string
	client  *client.Client
	ns      netns.NsHandle // closed handle: the caller's namespace
	ctd     *daemon
	dockerd *daemon
	created []string // host paths dockerd makes outside Dir, to remove
}

// Available says why the engine cannot run (nil: it can).
func Available() error {
	for _, b := range []string{"dockerd", "containerd", "runc"} {
		if _, err := exec.LookPath(b); err != nil {
			return fmt.Errorf("%s is not installed (apt-get install docker.io)", b)
		}
	}
	return nil
}

// Start starts containerd and dockerd and waits until both answer (within
// 15s and 30s, or until ctx is done). On error, what was started is
// stopped again.
func Start(ctx context.Context, opts Options) (e *Engine, err error) {
	if opts.Dir == "" || opts.Bridge == "" {
		return nil, errors.New("dockerd: Options.Dir and Options.Bridge are required")
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, err
	}
	e = &Engine{opts: opts, host: "unix://" + filepath.Join(opts.Dir, "docker.sock"), ns: netns.None()}
	defer func() {
		if err != nil {
			e.Close()
			e = nil
		}
	}()
	if opts.Netns != "" {
		if strings.Contains(opts.Netns, "/") {
			e.ns, err = netns.GetFromPath(opts.Netns)
		} else {
			e.ns, err = netns.GetFromName(opts.Netns)
		}
		if err != nil {
			return e, fmt.Errorf("netns %s: %w", opts.Netns, err)
		}
	}
	for _, p := range []string{"/etc/docker/key.json", "/run/docker/plugins", "/run/docker"} {
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			e.created = append(e.created, p)
		}
	}
	if err := e.startContainerd(ctx); err != nil {
		return e, err
	}
	return e, e.StartDockerd(ctx)
}

// Host is the engine's address (unix://DIR/docker.sock).
func (e *Engine) Host() string { return e.host }

// Client talks to the engine (API version negotiated).
func (e *Engine) Client() *client.Client { return e.client }

func (e *Engine) containerdSock() string { return filepath.Join(e.opts.Dir, "containerd.sock") }

func (e *Engine) startContainerd(ctx context.Context) error {
	dir := e.opts.Dir
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
`, filepath.Join(dir, "containerd"), filepath.Join(dir, "containerd-state"), e.containerdSock())
	cfgPath := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	d, err := e.spawn("containerd", "--config", cfgPath)
	if err != nil {
		return err
	}
	e.ctd = d
	return waitUntil(ctx, 15*time.Second, func() error {
		if d.exited() {
			return stopWaiting{fmt.Errorf("containerd exited: %s", e.logTail("containerd"))}
		}
		c, err := net.Dial("unix", e.containerdSock())
		if err == nil {
			c.Close()
		}
		return err
	})
}

// StartDockerd starts dockerd (again, after StopDockerd or KillDockerd) on
// the same state and waits until it answers. Containers with a restart
// policy come back up.
func (e *Engine) StartDockerd(ctx context.Context) error {
	dir := e.opts.Dir
	args := []string{
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"),
		"--host", e.host,
		"--containerd", e.containerdSock(),
		"--bridge", e.opts.Bridge,
		// Nothing changes outside the engine's namespace: no firewall
		// rules, no sysctls, no NAT. Containers on the same bridge talk
		// without forwarding.
		"--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
		"--userland-proxy=false",
		"--shutdown-timeout=2",
	}
	if e.opts.FixedCIDR.IsValid() {
		args = append(args, "--fixed-cidr", e.opts.FixedCIDR.String())
	}
	d, err := e.spawn("dockerd", args...)
	if err != nil {
		return err
	}
	e.dockerd = d
	if e.client == nil {
		if e.client, err = client.New(client.WithHost(e.host)); err != nil {
			return err
		}
	}
	return waitUntil(ctx, 30*time.Second, func() error {
		if d.exited() {
			return stopWaiting{fmt.Errorf("dockerd exited: %s", e.logTail("dockerd"))}
		}
		c, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := e.client.Ping(c, client.PingOptions{NegotiateAPIVersion: true})
		return err
	})
}

// StopDockerd stops dockerd (its containers stop with it; containerd
// stays).
func (e *Engine) StopDockerd() error {
	if e.dockerd == nil {
		return nil
	}
	err := e.dockerd.stop(20 * time.Second)
	e.dockerd = nil
	return err
}

// KillDockerd kills dockerd with SIGKILL: it sends no events and its
// containers keep running under containerd until StartDockerd, where the
// engine (without live-restore) stops them and restarts those with a
// restart policy.
func (e *Engine) KillDockerd() {
	if e.dockerd == nil {
		return
	}
	e.dockerd.cmd.Process.Kill()
	<-e.dockerd.done
	e.dockerd = nil
}

// ImportImage makes the image tag FROM scratch holding only binary (which
// must be static) as /trireme, its entrypoint, with cmd as the default
// command when given.
func (e *Engine) ImportImage(ctx context.Context, tag string, binary []byte, cmd ...string) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "trireme", Mode: 0o755, Size: int64(len(binary)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	if _, err := tw.Write(binary); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	changes := []string{`ENTRYPOINT ["/trireme"]`}
	if len(cmd) > 0 {
		j, err := json.Marshal(cmd)
		if err != nil {
			return err
		}
		changes = append(changes, "CMD "+string(j))
	}
	res, err := e.client.ImageImport(ctx, client.ImageImportSource{Source: &buf, SourceName: "-"}, tag,
		client.ImageImportOptions{Changes: changes})
	if err != nil {
		return fmt.Errorf("import image: %w", err)
	}
	defer res.Close()
	out, _ := io.ReadAll(res)
	if bytes.Contains(out, []byte(`"error"`)) {
		return fmt.Errorf("import image: %s", out)
	}
	return nil
}

// RemoveContainers force-removes every container of the engine.
func (e *Engine) RemoveContainers(ctx context.Context) error {
	if e.client == nil || e.dockerd == nil || e.dockerd.exited() {
		return nil
	}
	list, err := e.client.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		return nil // dockerd is going away: stopping it stops them
	}
	var errs []error
	for _, c := range list.Items {
		if _, err := e.client.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true}); err != nil {
			errs = append(errs, fmt.Errorf("remove container %s: %w", c.ID, err))
		}
	}
	return errors.Join(errs...)
}

// Close removes the containers, stops dockerd and containerd, kills what
// they left running, detaches every mount under Dir (Dir itself stays),
// and removes what dockerd made outside Dir. A second call does no harm.
func (e *Engine) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	errs := []error{e.RemoveContainers(ctx)}
	cancel()
	if e.client != nil {
		e.client.Close()
	}
	errs = append(errs, e.StopDockerd())
	if e.ctd != nil {
		errs = append(errs, e.ctd.stop(10*time.Second))
		e.ctd = nil
	}
	CleanUnder(e.opts.Dir)
	if e.ns.IsOpen() {
		e.ns.Close()
		e.ns = netns.None()
	}
	for _, p := range e.created {
		os.Remove(p) // a directory only if empty: another engine may use it now
	}
	e.created = nil
	return errors.Join(errs...)
}

// CleanUnder kills every process whose command line names a path under dir
// (containerd shims of containers that outlived containerd) and detaches
// every mount below dir (overlay roots, netns bind mounts, shm), deepest
// first, so that dir can be removed.
func CleanUnder(dir string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(dir+"/")) {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(p, "/proc/%d/cmdline", &pid); err == nil && pid != os.Getpid() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mounts []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			mounts = append(mounts, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	for _, m := range mounts {
		unix.Unmount(m, unix.MNT_DETACH)
	}
}

// daemon is containerd or dockerd; done closes when it has exited.
type daemon struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// spawn starts a daemon in the engine's namespace with its output in
// Dir/NAME.log.
func (e *Engine) spawn(name string, args ...string) (*daemon, error) {
	logf, err := os.OpenFile(filepath.Join(e.opts.Dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a ^C to the caller does not hit the daemon before
	// Close stops it. Pdeathsig stops it if the caller dies; it fires when
	// the forking thread exits, so the fork happens on a thread locked for
	// the daemon's whole life.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	d := &daemon{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if !e.ns.IsOpen() {
			defer runtime.UnlockOSThread()
		} // else: a thread switched into another namespace is never reused; it exits with this goroutine
		defer close(d.done)
		defer logf.Close()
		if e.ns.IsOpen() {
			if err := netns.Set(e.ns); err != nil {
				started <- fmt.Errorf("enter netns: %w", err)
				return
			}
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return d, nil
}

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits; SIGKILL after the timeout.
func (d *daemon) stop(timeout time.Duration) error {
	if d.exited() {
		return nil
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(timeout):
		d.cmd.Process.Kill()
		<-d.done
		return fmt.Errorf("%s did not stop within %v; killed", filepath.Base(d.cmd.Path), timeout)
	}
}

// logTail is the end of Dir/NAME.log.
func (e *Engine) logTail(name string) string {
	b, _ := os.ReadFile(filepath.Join(e.opts.Dir, name+".log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

type stopWaiting struct{ error }

// waitUntil polls fn until it succeeds, returns stopWaiting, time runs out
// or ctx is done.
func waitUntil(ctx context.Context, limit time.Duration, fn func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		var s stopWaiting
		if errors.As(err, &s) {
			return s.error
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %w", limit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
