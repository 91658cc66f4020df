// Package dockerenv runs a private Docker engine (package dockerd) for
// tests: its own containerd and dockerd with state, exec root and socket in
// a temporary directory, containers on a bridge the test creates, no
// iptables rules and no sysctl changes on the host. It builds a small image FROM scratch that
// holds the project's static trireme binary (nothing is pulled: no registry
// is reachable). Everything is stopped and removed by t.Cleanup, also when
// the test fails.
//
// Debian's docker.io is installed with apt-get when dockerd is missing.
package dockerenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/trireme-go/trireme/dockerd"
	"github.com/trireme-go/trireme/netsetup"
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

	t      testing.TB
	engine *dockerd.Engine

	ownBridge bool
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
	e := &Env{Dir: dir, t: t, netns: netns.None()}
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
	if opts.Bridge == "" {
		if err := e.makeBridge(); err != nil {
			t.Fatal(err)
		}
	} else if err := e.useBridge(opts.Bridge); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if e.engine, err = dockerd.Start(ctx, dockerd.Options{Dir: dir, Netns: opts.Netns, Bridge: e.Bridge, FixedCIDR: opts.FixedCIDR}); err != nil {
		t.Fatalf("dockerenv: %v", err)
	}
	e.Host, e.Client = e.engine.Host(), e.engine.Client()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	ictx, icancel := context.WithTimeout(context.Background(), time.Minute)
	defer icancel()
	if err := e.engine.ImportImage(ictx, Image, bin, "probe", "serve", "--tcp", "80", "--udp", "80"); err != nil {
		t.Fatalf("dockerenv: %v", err)
	}
	return e
}

var installMu sync.Mutex

// EnsureInstalled installs Debian's docker.io (dockerd, containerd, runc)
// when dockerd is missing.
func EnsureInstalled() error {
	installMu.Lock()
	defer installMu.Unlock()
	if dockerd.Available() == nil {
		return nil
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
	addrs, err := netsetup.Dump(func() ([]netlink.Addr, error) { return e.nl.AddrList(l, netlink.FAMILY_V4) })
	if err != nil || len(addrs) == 0 {
		return fmt.Errorf("dockerenv: bridge %s has no IPv4 address (%v)", name, err)
	}
	ip, _ := netip.AddrFromSlice(addrs[0].IP.To4())
	ones, _ := addrs[0].Mask.Size()
	e.Bridge, e.Subnet = name, netip.PrefixFrom(ip, ones).Masked()
	return nil
}

// StartDaemon starts dockerd again (after StopDaemon or KillDaemon) on the
// same state and waits until it answers. Containers with a restart policy
// come back up.
func (e *Env) StartDaemon() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.engine.StartDockerd(ctx); err != nil {
		return fmt.Errorf("dockerenv: %w", err)
	}
	return nil
}

// StopDaemon stops dockerd (containers stop with it; containerd stays).
func (e *Env) StopDaemon() error {
	if err := e.engine.StopDockerd(); err != nil {
		return fmt.Errorf("dockerenv: %w", err)
	}
	return nil
}

// KillDaemon kills dockerd with SIGKILL: it sends no events and its
// containers keep running under containerd until StartDaemon, where the
// engine (without live-restore) stops them and restarts those with a
// restart policy.
func (e *Env) KillDaemon() { e.engine.KillDockerd() }

func (e *Env) logTail(name string) string {
	b, _ := os.ReadFile(filepath.Join(e.Dir, name))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
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
	if e.engine != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := e.engine.RemoveContainers(ctx); err != nil {
			t.Logf("dockerenv: %v", err)
		}
		cancel()
	}
	if t.Failed() {
		t.Logf("dockerenv: dockerd log tail:\n%s", e.logTail("dockerd.log"))
	}
	if e.engine != nil {
		if err := e.engine.Close(); err != nil {
			t.Errorf("dockerenv: %v", err)
		}
	}
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
