// Package dockerenv runs a private Docker engine for tests: its own
// containerd and dockerd with state, exec root and socket in a temporary
// directory, containers on a bridge the test creates, no iptables rules and
// no sysctl changes on the host. It builds a small image FROM scratch that
// holds the project's static trireme binary (nothing is pulled: no registry
// is reachable). Everything is stopped and removed by t.Cleanup, also when
// the test fails.
//
// Debian's docker.io is installed with apt-get when dockerd is missing.
// Docker 20.10 writes /etc/docker/key.json and makes /run/docker/plugins
// whatever its flags say; both are removed again when this package created
// them.
package dockerenv

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
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
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Image is the tag of the test image: /trireme, entrypoint ["/trireme"],
// default command `probe serve --tcp 80 --udp 80`.
const Image = "trireme-probe:test"

// Env is a running private Docker engine.
type Env struct {
	Dir    string         // state, exec root, socket, logs
	Host   string         // unix://DIR/docker.sock
	Bridge string         // the bridge containers attach to
	Subnet netip.Prefix   // the bridge's subnet; the bridge has .1
	Client *client.Client // negotiated API version

	t       testing.TB
	ctd     *exec.Cmd
	dockerd *exec.Cmd
	created []string // host paths dockerd makes outside Dir, to remove
	waits   map[*exec.Cmd]chan struct{}

	ownBridge bool
	fixedCIDR netip.Prefix
	netns     netns.NsHandle // -1: the test's own
	nl        *netlink.Handle
}

// Options change where containers are attached.
type Options struct {
	// Bridge, when set, is an existing bridge (e.g. the node bridge a
	// trireme daemon made) to attach containers to instead of a new one;
	// it is left in place at cleanup. Its first IPv4 address is the
	// containers' gateway.
	Bridge string
	// FixedCIDR restricts the container addresses to a part of the
	// bridge's subnet (dockerd --fixed-cidr), so they do not collide with
	// addresses the daemon gives its own PUs.
	FixedCIDR netip.Prefix
	// Netns, when set, names a network namespace (under /run/netns, e.g. a
	// testenv node) that containerd and dockerd run in: the bridge, the
	// containers' veths and everything dockerd does to the network are
	// there and nothing is on the host. Only their network namespace
	// changes (the mount namespace is the test's, so cleanup sees their
	// mounts).
	Netns string
}

// Start installs docker.io if needed, starts a private containerd and
// dockerd on a new bridge, and imports the test image. It skips the test
// when not root.
func Start(t testing.TB) *Env {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with options.
func StartWith(t testing.TB, opts Options) *Env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (runs a private dockerd)")
	}
	if err := EnsureInstalled(); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "trd") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{Dir: dir, Host: "unix://" + filepath.Join(dir, "docker.sock"), t: t, waits: map[*exec.Cmd]chan struct{}{}, netns: netns.None()}
	t.Cleanup(e.cleanup)
	if opts.Netns != "" {
		if e.netns, err = netns.GetFromName(opts.Netns); err != nil {
			t.Fatalf("dockerenv: netns %s: %v", opts.Netns, err)
		}
		e.nl, err = netlink.NewHandleAt(e.netns)
	} else {
		e.nl, err = netlink.NewHandle()
	}
	if err != nil {
		t.Fatalf("dockerenv: netlink: %v", err)
	}
	for _, p := range []string{"/etc/docker/key.json", "/run/docker/plugins", "/run/docker"} {
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			e.created = append(e.created, p)
		}
	}
	if opts.Bridge == "" {
		if err := e.makeBridge(); err != nil {
			t.Fatal(err)
		}
	} else if err := e.useBridge(opts.Bridge); err != nil {
		t.Fatal(err)
	}
	e.fixedCIDR = opts.FixedCIDR
	if err := e.startContainerd(); err != nil {
		t.Fatal(err)
	}
	if err := e.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := e.importImage(); err != nil {
		t.Fatal(err)
	}
	return e
}

var installMu sync.Mutex

// EnsureInstalled installs Debian's docker.io (dockerd, containerd, runc)
// when dockerd is missing.
func EnsureInstalled() error {
	installMu.Lock()
	defer installMu.Unlock()
	if _, err := exec.LookPath("dockerd"); err == nil {
		if _, err := exec.LookPath("containerd"); err == nil {
			return nil
		}
	}
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	for _, args := range [][]string{
		{"apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-qq"},
		{"apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-qq", "docker.io"},
	} {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("dockerenv: %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	if _, err := exec.LookPath("dockerd"); err != nil {
		return fmt.Errorf("dockerenv: docker.io installed but %w", err)
	}
	return nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// makeBridge creates the bridge dockerd attaches containers to, on a free
// /24 in 10.210.0.0/16.
func (e *Env) makeBridge() error {
	used := map[netip.Prefix]bool{}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok {
					if p, err := ip.Unmap().Prefix(24); err == nil {
						used[p] = true
					}
				}
			}
		}
	}
	b := make([]byte, 1)
	for i := 0; ; i++ {
		rand.Read(b)
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 210, b[0], 0}), 24)
		if !used[p] {
			e.Subnet = p
			break
		}
		if i > 100 {
			return errors.New("dockerenv: no free /24 in 10.210.0.0/16")
		}
	}
	e.Bridge = "trd" + randHex(5)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: e.Bridge}}
	if err := e.nl.LinkAdd(br); err != nil {
		return fmt.Errorf("dockerenv: add bridge %s: %w", e.Bridge, err)
	}
	e.ownBridge = true
	gw := e.Subnet.Addr().Next()
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(24, 32)}}
	if err := e.nl.AddrAdd(br, addr); err != nil {
		return fmt.Errorf("dockerenv: address on %s: %w", e.Bridge, err)
	}
	return e.nl.LinkSetUp(br)
}

// useBridge attaches containers to an existing bridge with an IPv4 address.
func (e *Env) useBridge(name string) error {
	l, err := e.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("dockerenv: bridge %s: %w", name, err)
	}
	addrs, err := e.nl.AddrList(l, netlink.FAMILY_V4)
	if err != nil || len(addrs) == 0 {
		return fmt.Errorf("dockerenv: bridge %s has no IPv4 address (%v)", name, err)
	}
	ip, _ := netip.AddrFromSlice(addrs[0].IP.To4())
	ones, _ := addrs[0].Mask.Size()
	e.Bridge, e.Subnet = name, netip.PrefixFrom(ip, ones).Masked()
	return nil
}

func (e *Env) startContainerd() error {
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
`, filepath.Join(e.Dir, "containerd"), filepath.Join(e.Dir, "containerd-state"), e.containerdSock())
	cfgPath := filepath.Join(e.Dir, "containerd.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	cmd, err := e.spawn("containerd.log", "containerd", "--config", cfgPath)
	if err != nil {
		return err
	}
	e.ctd = cmd
	return waitFor(10*time.Second, func() error {
		if e.exited(cmd) {
			return errStop(fmt.Errorf("containerd exited: %s", e.logTail("containerd.log")))
		}
		c, err := net.Dial("unix", e.containerdSock())
		if err == nil {
			c.Close()
		}
		return err
	})
}

func (e *Env) containerdSock() string { return filepath.Join(e.Dir, "containerd.sock") }

// spawn starts a daemon with its output in a log file in Dir; a goroutine
// reaps it so that ProcessState tells whether it exited.
func (e *Env) spawn(logName string, name string, args ...string) (*exec.Cmd, error) {
	logf, err := os.OpenFile(filepath.Join(e.Dir, logName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a ^C to the test does not hit the daemon before
	// cleanup stops it. Pdeathsig stops it if the test process dies; it
	// fires when the forking thread exits, so the fork happens on a thread
	// locked for the daemon's whole life.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	started := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if !e.netns.IsOpen() {
			defer runtime.UnlockOSThread()
		} // else: a thread switched into another namespace is never reused; it exits with this goroutine
		defer close(done)
		defer logf.Close()
		if e.netns.IsOpen() {
			if err := netns.Set(e.netns); err != nil {
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
		return nil, fmt.Errorf("dockerenv: start %s: %w", name, err)
	}
	e.waits[cmd] = done
	return cmd, nil
}

// StartDaemon starts dockerd (again) on the same state and waits until it
// answers. Containers with a restart policy come back up.
func (e *Env) StartDaemon() error {
	args := []string{
		"--data-root", filepath.Join(e.Dir, "data"),
		"--exec-root", filepath.Join(e.Dir, "exec"),
		"--pidfile", filepath.Join(e.Dir, "docker.pid"),
		"--host", e.Host,
		"--containerd", e.containerdSock(),
		"--bridge", e.Bridge,
		// No firewall or sysctl changes on the host: containers on the
		// same bridge talk without forwarding or NAT.
		"--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
		"--userland-proxy=false",
		"--shutdown-timeout=2",
	}
	if e.fixedCIDR.IsValid() {
		args = append(args, "--fixed-cidr", e.fixedCIDR.String())
	}
	cmd, err := e.spawn("dockerd.log", "dockerd", args...)
	if err != nil {
		return err
	}
	e.dockerd = cmd
	if e.Client == nil {
		c, err := client.New(client.WithHost(e.Host))
		if err != nil {
			return err
		}
		e.Client = c
	}
	return waitFor(30*time.Second, func() error {
		if e.exited(cmd) {
			return errStop(fmt.Errorf("dockerd exited: %s", e.logTail("dockerd.log")))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := e.Client.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
		return err
	})
}

// StopDaemon stops dockerd (containers stop with it; containerd stays).
func (e *Env) StopDaemon() error {
	if e.dockerd == nil {
		return nil
	}
	err := e.stop(e.dockerd, 20*time.Second)
	e.dockerd = nil
	return err
}

// KillDaemon kills dockerd with SIGKILL: it sends no events and its
// containers keep running under containerd until StartDaemon, where the
// engine (without live-restore) stops them and restarts those with a
// restart policy.
func (e *Env) KillDaemon() {
	if e.dockerd == nil {
		return
	}
	e.dockerd.Process.Kill()
	<-e.waits[e.dockerd]
	e.dockerd = nil
}

func (e *Env) exited(cmd *exec.Cmd) bool {
	select {
	case <-e.waits[cmd]:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits; SIGKILL after the timeout.
func (e *Env) stop(cmd *exec.Cmd, timeout time.Duration) error {
	done := e.waits[cmd]
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("dockerenv: %s did not stop within %v; killed", filepath.Base(cmd.Path), timeout)
	}
}

func (e *Env) logTail(name string) string {
	b, _ := os.ReadFile(filepath.Join(e.Dir, name))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

type stopErr struct{ error }

func errStop(err error) error { return stopErr{err} }

// waitFor polls fn until it succeeds, returns a stopErr, or time runs out.
func waitFor(limit time.Duration, fn func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		var s stopErr
		if errors.As(err, &s) {
			return s.error
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dockerenv: not ready after %v: %w", limit, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var (
	buildOnce sync.Once
	binary    []byte
	buildErr  error
)

// BinaryEnv names a prebuilt static trireme binary to put in the image
// instead of building one (e.g. `make test` builds it once for all packages).
const BinaryEnv = "TRIREME_TEST_BINARY"

// Binary returns the static (CGO_ENABLED=0) trireme binary, built once per
// test process from the module the test runs in, or read from $BinaryEnv.
func Binary() ([]byte, error) {
	buildOnce.Do(func() {
		if p := os.Getenv(BinaryEnv); p != "" {
			binary, buildErr = os.ReadFile(p)
			return
		}
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		gobin, err := exec.LookPath("go")
		if err != nil {
			gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		dir, err := os.MkdirTemp("", "trd-bin")
		if err != nil {
			buildErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "trireme")
		cmd := exec.Command(gobin, "build", "-o", out, "./cmd/trireme")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if o, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("dockerenv: build static trireme: %v\n%s", err, o)
			return
		}
		binary, buildErr = os.ReadFile(out)
	})
	return binary, buildErr
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.Contains(b, []byte("module github.com/trireme-go/trireme\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("dockerenv: module root (go.mod) not found above the working directory")
		}
		dir = parent
	}
}

// importImage makes the test image from a tar holding only /trireme.
func (e *Env) importImage() error {
	bin, err := Binary()
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "trireme", Mode: 0o755, Size: int64(len(bin)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	tw.Write(bin)
	if err := tw.Close(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := e.Client.ImageImport(ctx, client.ImageImportSource{Source: &buf, SourceName: "-"}, Image,
		client.ImageImportOptions{Changes: []string{
			`ENTRYPOINT ["/trireme"]`,
			`CMD ["probe", "serve", "--tcp", "80", "--udp", "80"]`,
		}})
	if err != nil {
		return fmt.Errorf("dockerenv: import image: %w", err)
	}
	defer res.Close()
	out, _ := io.ReadAll(res)
	if bytes.Contains(out, []byte(`"error"`)) {
		return fmt.Errorf("dockerenv: import image: %s", out)
	}
	return nil
}

// Container describes a container to run.
type Container struct {
	Name    string
	Labels  map[string]string
	Network string   // "" (the default bridge), "host", "none", "container:X"
	Cmd     []string // default: probe serve --tcp 80 --udp 80 --name NAME
	Restart string   // restart policy: "", "always", "unless-stopped"
	// Create only: do not start it.
	CreateOnly bool
}

// Run creates (and starts) a container from the test image and returns its
// ID. It is removed at cleanup (cleanup removes every container anyway).
func (e *Env) Run(t testing.TB, c Container) string {
	t.Helper()
	cmd := c.Cmd
	if cmd == nil {
		cmd = []string{"probe", "serve", "--tcp", "80", "--udp", "80", "--name", c.Name}
	}
	hc := &container.HostConfig{NetworkMode: container.NetworkMode(c.Network)}
	if c.Restart != "" {
		hc.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyMode(c.Restart)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := e.Client.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:             c.Name,
		Config:           &container.Config{Image: Image, Cmd: cmd, Labels: c.Labels},
		HostConfig:       hc,
		NetworkingConfig: &network.NetworkingConfig{},
	})
	if err != nil {
		t.Fatalf("dockerenv: create %s: %v", c.Name, err)
	}
	if !c.CreateOnly {
		if _, err := e.Client.ContainerStart(ctx, res.ID, client.ContainerStartOptions{}); err != nil {
			t.Fatalf("dockerenv: start %s: %v", c.Name, err)
		}
	}
	return res.ID
}

// RunToExit runs a short-lived container (e.g. `probe connect`) to its end
// and returns its exit code and output (stdout and stderr); the container is
// removed. For `probe connect`: 0 ok, 1 refused, 2 reset, 3 timeout.
func (e *Env) RunToExit(t testing.TB, c Container, limit time.Duration) (int, string) {
	t.Helper()
	c.CreateOnly = true
	id := e.Run(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	defer e.Client.ContainerRemove(context.Background(), id, client.ContainerRemoveOptions{Force: true})
	// Wait for the next exit before starting: no race with a fast exit.
	wait := e.Client.ContainerWait(ctx, id, client.ContainerWaitOptions{Condition: container.WaitConditionNextExit})
	if _, err := e.Client.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		t.Fatalf("dockerenv: start %s: %v", c.Name, err)
	}
	var code int
	select {
	case res := <-wait.Result:
		if res.Error != nil {
			t.Fatalf("dockerenv: wait %s: %s", c.Name, res.Error.Message)
		}
		code = int(res.StatusCode)
	case err := <-wait.Error:
		t.Fatalf("dockerenv: wait %s: %v", c.Name, err)
	}
	logs, err := e.Client.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatalf("dockerenv: logs %s: %v", c.Name, err)
	}
	defer logs.Close()
	var out bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &out, logs); err != nil {
		t.Fatalf("dockerenv: logs %s: %v", c.Name, err)
	}
	return code, out.String()
}

// IP returns a running container's address on its (first) network.
func (e *Env) IP(t testing.TB, id string) netip.Addr {
	t.Helper()
	c := e.Inspect(t, id)
	if c.NetworkSettings != nil {
		for _, ep := range c.NetworkSettings.Networks {
			if ep != nil && ep.IPAddress.IsValid() {
				return ep.IPAddress
			}
		}
	}
	t.Fatalf("dockerenv: container %s has no IP", id)
	return netip.Addr{}
}

// Inspect returns the engine's view of a container.
func (e *Env) Inspect(t testing.TB, id string) container.InspectResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := e.Client.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatalf("dockerenv: inspect %s: %v", id, err)
	}
	return res.Container
}

// Do runs one engine call with a timeout and fails the test on error.
func (e *Env) Do(t testing.TB, what string, fn func(ctx context.Context, c *client.Client) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := fn(ctx, e.Client); err != nil {
		t.Fatalf("dockerenv: %s: %v", what, err)
	}
}

func (e *Env) cleanup() {
	t := e.t
	if e.Client != nil && e.dockerd != nil && !e.exited(e.dockerd) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if list, err := e.Client.ContainerList(ctx, client.ContainerListOptions{All: true}); err == nil {
			for _, c := range list.Items {
				if _, err := e.Client.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true}); err != nil {
					t.Logf("dockerenv: remove container %s: %v", c.ID, err)
				}
			}
		}
		cancel()
	}
	if e.Client != nil {
		e.Client.Close()
	}
	if t.Failed() {
		t.Logf("dockerenv: dockerd log tail:\n%s", e.logTail("dockerd.log"))
	}
	if e.dockerd != nil {
		if err := e.StopDaemon(); err != nil {
			t.Error(err)
		}
	}
	if e.ctd != nil {
		if err := e.stop(e.ctd, 10*time.Second); err != nil {
			t.Error(err)
		}
	}
	e.killStrays()
	unmountUnder(e.Dir)
	if err := os.RemoveAll(e.Dir); err != nil {
		t.Errorf("dockerenv: remove %s: %v", e.Dir, err)
	}
	if e.ownBridge {
		if l, err := e.nl.LinkByName(e.Bridge); err == nil {
			if err := e.nl.LinkDel(l); err != nil {
				t.Errorf("dockerenv: delete bridge %s: %v", e.Bridge, err)
			}
		}
	}
	if e.nl != nil {
		e.nl.Close()
	}
	if e.netns.IsOpen() {
		e.netns.Close()
	}
	for _, p := range e.created {
		if p == "/run/docker/plugins" || p == "/run/docker" {
			os.Remove(p) // only if empty: another engine may use it now
			continue
		}
		os.Remove(p)
	}
}

// killStrays kills processes still running from this engine (containerd
// shims of containers that outlived a killed containerd).
func (e *Env) killStrays() {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(e.Dir+"/")) {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(p, "/proc/%d/cmdline", &pid); err == nil && pid != os.Getpid() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// unmountUnder detaches every mount below dir (overlay roots, netns bind
// mounts, shm), deepest first.
func unmountUnder(dir string) {
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

// Exec runs cmd in a running container (`docker exec`) and returns its exit
// code and output (stdout and stderr).
func (e *Env) Exec(t testing.TB, id string, limit time.Duration, cmd ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	ex, err := e.Client.ExecCreate(ctx, id, client.ExecCreateOptions{Cmd: cmd, AttachStdout: true, AttachStderr: true})
	if err != nil {
		t.Fatalf("dockerenv: exec in %.12s: %v", id, err)
	}
	att, err := e.Client.ExecAttach(ctx, ex.ID, client.ExecAttachOptions{})
	if err != nil {
		t.Fatalf("dockerenv: exec in %.12s: %v", id, err)
	}
	defer att.Close()
	var out bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &out, att.Reader); err != nil {
		t.Fatalf("dockerenv: exec in %.12s: output: %v", id, err)
	}
	// The stream ends when the process does; its status follows shortly.
	for {
		res, err := e.Client.ExecInspect(ctx, ex.ID, client.ExecInspectOptions{})
		if err != nil {
			t.Fatalf("dockerenv: exec in %.12s: inspect: %v", id, err)
		}
		if !res.Running {
			return res.ExitCode, out.String()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("dockerenv: exec in %.12s: still running after %v", id, limit)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
