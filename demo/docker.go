package demo

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"golang.org/x/sys/unix"
)

// DockerImage is the demo's image: FROM scratch, only the static trireme
// binary (nothing is pulled).
const DockerImage = "trireme-demo:latest"

// dockerEngine is a private containerd + dockerd running in the node
// namespace, on the node bridge, with its state under the demo directory.
type dockerEngine struct {
	dir     string
	host    string
	client  *client.Client
	ctd     *proc
	dockerd *proc
	created []string // host paths dockerd makes outside dir
}

// DockerAvailable says whether the Docker part can run, and why not.
func DockerAvailable(binary string) (bool, string) {
	for _, b := range []string{"dockerd", "containerd", "runc"} {
		if _, err := exec.LookPath(b); err != nil {
			return false, b + " is not installed (apt-get install docker.io)"
		}
	}
	f, err := elf.Open(binary)
	if err != nil {
		return false, fmt.Sprintf("cannot read %s: %v", binary, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false, binary + " is not static (build it with CGO_ENABLED=0, as `make build` does)"
		}
	}
	return true, ""
}

// startDocker starts containerd and dockerd in the node namespace, with
// containers on the node bridge (which must exist), and imports the image.
func (e *Env) startDocker(ctx context.Context) error {
	d := &dockerEngine{dir: filepath.Join(e.Dir, "docker")}
	// Socket paths are limited to 108 bytes: the demo directory is short.
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return err
	}
	d.host = "unix://" + filepath.Join(d.dir, "docker.sock")
	for _, p := range []string{"/etc/docker/key.json", "/run/docker/plugins", "/run/docker"} {
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			d.created = append(d.created, p)
		}
	}
	e.mu.Lock()
	e.docker = d
	e.mu.Unlock()

	ctdSock := filepath.Join(d.dir, "containerd.sock")
	cfg := fmt.Sprintf("version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = %q\n",
		filepath.Join(d.dir, "containerd"), filepath.Join(d.dir, "containerd-state"), ctdSock)
	cfgPath := filepath.Join(d.dir, "containerd.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	var err error
	if d.ctd, err = e.startCmd(e.Node, "containerd", nil, "containerd", "--config", cfgPath); err != nil {
		return err
	}
	if err := waitUntil(ctx, 15*time.Second, func() error {
		if d.ctd.exited() {
			return stopWaiting{fmt.Errorf("containerd exited: %s", tail(filepath.Join(e.Dir, "containerd.log")))}
		}
		c, err := net.Dial("unix", ctdSock)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		return err
	}
	if d.dockerd, err = e.startCmd(e.Node, "dockerd", nil, "dockerd",
		"--data-root", filepath.Join(d.dir, "data"),
		"--exec-root", filepath.Join(d.dir, "exec"),
		"--pidfile", filepath.Join(d.dir, "docker.pid"),
		"--host", d.host,
		"--containerd", ctdSock,
		"--bridge", bridgeName,
		"--fixed-cidr", DockerCIDR.String(),
		// Nothing outside the node namespace changes: no firewall rules,
		// no sysctls, no NAT.
		"--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
		"--userland-proxy=false", "--shutdown-timeout=2"); err != nil {
		return err
	}
	if d.client, err = client.New(client.WithHost(d.host)); err != nil {
		return err
	}
	if err := waitUntil(ctx, 30*time.Second, func() error {
		if d.dockerd.exited() {
			return stopWaiting{fmt.Errorf("dockerd exited: %s", tail(filepath.Join(e.Dir, "dockerd.log")))}
		}
		c, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := d.client.Ping(c, client.PingOptions{NegotiateAPIVersion: true})
		return err
	}); err != nil {
		return err
	}
	return d.importImage(ctx, e.Binary)
}

// DockerHost is the private engine's address ("" when not running).
func (e *Env) DockerHost() string {
	if e.docker == nil {
		return ""
	}
	return e.docker.host
}

func (d *dockerEngine) importImage(ctx context.Context, binary string) error {
	bin, err := os.ReadFile(binary)
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
	res, err := d.client.ImageImport(ctx, client.ImageImportSource{Source: &buf, SourceName: "-"}, DockerImage,
		client.ImageImportOptions{Changes: []string{`ENTRYPOINT ["/trireme"]`}})
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

// RunContainer starts a labelled container from the demo image serving
// the host's ports with `trireme probe serve`, and records it as a host
// (its address is the one Docker gave it).
func (e *Env) RunContainer(ctx context.Context, h *Host) error {
	d := e.docker
	if d == nil {
		return errors.New("no Docker engine")
	}
	cmd := []string{"probe", "serve", "--name", h.Name}
	if len(h.TCP) > 0 {
		cmd = append(cmd, "--tcp", joinInts(h.TCP))
	}
	res, err := d.client.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:             NamePrefix + e.Suffix + "-" + h.Name,
		Config:           &container.Config{Image: DockerImage, Cmd: cmd, Labels: h.Labels},
		HostConfig:       &container.HostConfig{},
		NetworkingConfig: &network.NetworkingConfig{},
	})
	if err != nil {
		return fmt.Errorf("create container %s: %w", h.Name, err)
	}
	if _, err := d.client.ContainerStart(ctx, res.ID, client.ContainerStartOptions{}); err != nil {
		return fmt.Errorf("start container %s: %w", h.Name, err)
	}
	ins, err := d.client.ContainerInspect(ctx, res.ID, client.ContainerInspectOptions{})
	if err != nil {
		return fmt.Errorf("inspect container %s: %w", h.Name, err)
	}
	c := ins.Container
	if c.State == nil || c.State.Pid == 0 || c.NetworkSettings == nil {
		return fmt.Errorf("container %s is not running", h.Name)
	}
	for _, ep := range c.NetworkSettings.Networks {
		if ep != nil && ep.IPAddress.IsValid() {
			h.Addr = ep.IPAddress
		}
	}
	if !h.Addr.IsValid() {
		return fmt.Errorf("container %s has no address", h.Name)
	}
	h.PU = true
	e.hosts[h.Name] = h
	e.hostNS[h.Name] = fmt.Sprintf("/proc/%d/ns/net", c.State.Pid)
	return nil
}

// stopDocker removes the containers and stops the engine, and removes its
// state and what dockerd made outside it.
func (d *dockerEngine) stop() []error {
	var errs []error
	if d.client != nil && d.dockerd != nil && !d.dockerd.exited() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if list, err := d.client.ContainerList(ctx, client.ContainerListOptions{All: true}); err == nil {
			for _, c := range list.Items {
				if _, err := d.client.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true}); err != nil {
					errs = append(errs, fmt.Errorf("remove container %s: %w", c.ID, err))
				}
			}
		}
		cancel()
	}
	if d.client != nil {
		d.client.Close()
	}
	if d.dockerd != nil {
		d.dockerd.stop(syscall.SIGTERM, 15*time.Second)
	}
	if d.ctd != nil {
		d.ctd.stop(syscall.SIGTERM, 10*time.Second)
	}
	killUnder(d.dir)
	unmountUnder(d.dir)
	for _, p := range d.created {
		os.Remove(p) // a directory only if empty: another engine may use it now
	}
	return errs
}

// killUnder kills processes whose command line names dir (containerd
// shims of containers that outlived containerd).
func killUnder(dir string) {
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
}

// unmountUnder detaches every mount below dir, deepest first.
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

type stopWaiting struct{ error }

// waitUntil polls fn until it succeeds, returns stopWaiting, or time runs out.
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

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
