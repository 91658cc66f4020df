package demo

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/trireme-go/trireme/dockerd"
)

// DockerImage is the demo's image: FROM scratch, only the static trireme
// binary (nothing is pulled).
const DockerImage = "trireme-demo:latest"

// DockerAvailable says whether the Docker part can run, and why not.
func DockerAvailable(binary string) (bool, string) {
	if err := dockerd.Available(); err != nil {
		return false, err.Error()
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

// startDocker starts a private containerd and dockerd in the node
// namespace, with containers on the node bridge (which must exist) and
// state under the demo directory (short: socket paths are limited), and
// imports the image.
func (e *Env) startDocker(ctx context.Context) error {
	d, err := dockerd.Start(ctx, dockerd.Options{Dir: filepath.Join(e.Dir, "docker"), Netns: e.Node,
		Bridge: bridgeName, FixedCIDR: DockerCIDR})
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.docker = d
	e.mu.Unlock()
	bin, err := os.ReadFile(e.Binary)
	if err != nil {
		return err
	}
	return d.ImportImage(ctx, DockerImage, bin)
}

// DockerHost is the private engine's address ("" when not running).
func (e *Env) DockerHost() string {
	if e.docker == nil {
		return ""
	}
	return e.docker.Host()
}

// RunContainer starts a labelled container from the demo image serving
// the host's ports with `trireme probe serve`, and records it as a host
// (its address is the one Docker gave it).
func (e *Env) RunContainer(ctx context.Context, h *Host) error {
	if e.docker == nil {
		return errors.New("no Docker engine")
	}
	d := e.docker.Client()
	cmd := []string{"probe", "serve", "--name", h.Name}
	if len(h.TCP) > 0 {
		cmd = append(cmd, "--tcp", joinInts(h.TCP))
	}
	res, err := d.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:             NamePrefix + e.Suffix + "-" + h.Name,
		Config:           &container.Config{Image: DockerImage, Cmd: cmd, Labels: h.Labels},
		HostConfig:       &container.HostConfig{},
		NetworkingConfig: &network.NetworkingConfig{},
	})
	if err != nil {
		return fmt.Errorf("create container %s: %w", h.Name, err)
	}
	if _, err := d.ContainerStart(ctx, res.ID, client.ContainerStartOptions{}); err != nil {
		return fmt.Errorf("start container %s: %w", h.Name, err)
	}
	if err := waitContainerReady(ctx, d, res.ID, h.Name); err != nil {
		return err
	}
	ins, err := d.ContainerInspect(ctx, res.ID, client.ContainerInspectOptions{})
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

// waitContainerReady waits until the container's `trireme probe serve`
// printed "ready" (every port bound): a connection made before would be
// refused by the container's kernel, not by policy.
func waitContainerReady(ctx context.Context, d *client.Client, id, name string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		logs, err := d.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true})
		if err == nil {
			b, _ := io.ReadAll(logs)
			logs.Close()
			if bytes.Contains(b, []byte("ready")) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("probe server in container %s not ready after 10s (%v)", name, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
