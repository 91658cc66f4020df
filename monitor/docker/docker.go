// Package docker is the Docker monitor: it follows a Docker engine's
// container events through the engine's Go client (API version negotiated,
// so engines from API 1.40 on work) and turns containers into PUs.
//
// Every event is handled by inspecting the container and reconciling the
// engine's state with the state the monitor last reported, so duplicate,
// missed or reordered engine events never produce a wrong lifecycle: a PU
// goes Create → Start → (Pause ↔ Unpause) → Stop → (Start ...) → Destroy.
// The same reconciliation runs over every container at connect time
// (resync): after a start, and after the engine went away and came back.
package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/trireme-go/trireme/monitor"
	"github.com/trireme-go/trireme/netsetup"
)

// Config configures a Docker monitor.
type Config struct {
	// Host is the engine address (unix:///var/run/docker.sock when empty,
	// or $DOCKER_HOST when set).
	Host string
	// Name is the monitor's name in events and logs ("docker").
	Name string
	// MinBackoff and MaxBackoff bound the reconnection delay, which
	// doubles after each failed attempt (100ms and 10s when zero).
	MinBackoff, MaxBackoff time.Duration
	Logger                 *slog.Logger
}

// Monitor follows one Docker engine.
type Monitor struct {
	cfg   Config
	cli   *client.Client
	log   *slog.Logger
	known map[string]*entry // by container ID; owned by Run's goroutine
}

type state uint8

const (
	stateCreated state = iota // exists, never seen running
	stateRunning
	statePaused
	stateStopped
)

func (s state) live() bool { return s == stateRunning || s == statePaused }

type entry struct {
	pu    monitor.PU
	state state
}

// New returns a monitor for the engine at cfg.Host. It does not connect:
// Run does, and keeps reconnecting.
func New(cfg Config) (*Monitor, error) {
	if cfg.Name == "" {
		cfg.Name = "docker"
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(10*time.Second, cfg.MinBackoff)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	opts := []client.Opt{client.FromEnv}
	if cfg.Host != "" {
		opts = append(opts, client.WithHost(cfg.Host))
	}
	cli, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker monitor: %w", err)
	}
	return &Monitor{cfg: cfg, cli: cli, log: cfg.Logger.With("monitor", cfg.Name), known: map[string]*entry{}}, nil
}

func (m *Monitor) Name() string { return m.cfg.Name }

// Run follows the engine until ctx is done: it subscribes to container
// events, resyncs, handles events; when the engine goes away it reconnects
// with exponential backoff and resyncs again. It returns nil when ctx ends.
func (m *Monitor) Run(ctx context.Context, out chan<- monitor.Event) error {
	defer m.cli.Close()
	backoff := m.cfg.MinBackoff
	for {
		connected, err := m.session(ctx, out)
		if ctx.Err() != nil {
			return nil
		}
		if connected {
			backoff = m.cfg.MinBackoff
			m.log.Warn("lost the docker engine; reconnecting", "error", err)
		} else {
			m.log.Warn("docker engine unavailable", "error", err, "retry_in", backoff)
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil
		}
		if !connected {
			backoff = min(2*backoff, m.cfg.MaxBackoff)
		}
	}
}

// session runs one connection to the engine. connected reports whether it
// got as far as a complete resync (then the backoff starts over).
func (m *Monitor) session(ctx context.Context, out chan<- monitor.Event) (connected bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	ping, err := m.cli.Ping(pctx, client.PingOptions{NegotiateAPIVersion: true})
	pcancel()
	if err != nil {
		return false, err
	}
	// Subscribe before listing, so nothing that happens during the resync
	// is missed; events already covered by it reconcile to no change.
	filters := client.Filters{}.
		Add("type", string(events.ContainerEventType)).
		Add("event", "create", "start", "die", "pause", "unpause", "destroy")
	sub := m.cli.Events(ctx, client.EventsListOptions{Filters: filters})
	m.log.Info("connected to the docker engine", "api", m.cli.ClientVersion(), "server_api", ping.APIVersion)
	if err := m.resync(ctx, out); err != nil {
		return false, err // an engine that cannot list: keep backing off
	}
	for {
		select {
		case msg := <-sub.Messages:
			if err := m.reconcile(ctx, out, msg.Actor.ID); err != nil {
				return true, err
			}
		case err := <-sub.Err:
			if err == nil {
				err = errors.New("event stream closed")
			}
			return true, err
		case <-ctx.Done():
			return true, ctx.Err()
		}
	}
}

// resync reconciles every container the engine has, and every container
// the monitor knows that the engine no longer has.
func (m *Monitor) resync(ctx context.Context, out chan<- monitor.Event) error {
	start := time.Now()
	list, err := m.cli.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	present := make(map[string]bool, len(list.Items))
	for _, c := range list.Items {
		present[c.ID] = true
		if err := m.reconcile(ctx, out, c.ID); err != nil {
			return err
		}
	}
	gone := 0
	for _, id := range sortedIDs(m.known) {
		if !present[id] {
			gone++
			if err := m.forget(ctx, out, id); err != nil {
				return err
			}
		}
	}
	m.log.Info("resynced", "containers", len(list.Items), "gone", gone, "took", time.Since(start))
	return nil
}

func sortedIDs(known map[string]*entry) []string {
	ids := make([]string, 0, len(known))
	for id := range known {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// reconcile inspects one container and emits the events that take the
// state last reported to the engine's. An error is returned only when the
// engine cannot be asked (the session ends) or ctx is done.
func (m *Monitor) reconcile(ctx context.Context, out chan<- monitor.Event, id string) error {
	if id == "" {
		return nil
	}
	res, err := m.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if cerrdefs.IsNotFound(err) {
		return m.forget(ctx, out, id)
	}
	if err != nil {
		return fmt.Errorf("inspect %s: %w", id, err)
	}
	c := res.Container
	if c.State == nil || c.Config == nil || c.HostConfig == nil {
		m.log.Warn("incomplete container inspection; ignored", "id", id)
		return nil
	}
	e, ok := m.known[id]
	if !ok {
		e = &entry{pu: m.basePU(&c), state: stateCreated}
		m.known[id] = e
		if err := m.emit(ctx, out, monitor.Create, e.pu); err != nil {
			return err
		}
	}
	want := stateStopped
	switch {
	case c.State.Running && c.State.Paused:
		want = statePaused
	case c.State.Running && !c.State.Restarting && c.State.Pid > 0:
		want = stateRunning
	}

	// A live container with another PID restarted behind our back.
	if e.state.live() && want.live() && c.State.Pid != e.pu.PID {
		e.state = stateStopped
		if err := m.emit(ctx, out, monitor.Stop, e.pu); err != nil {
			return err
		}
	}
	switch {
	case want.live() && !e.state.live():
		pu, err := m.runningPU(ctx, &c)
		if err != nil {
			// Most likely it died between inspect and the namespace
			// lookup; its die event reconciles again.
			m.log.Warn("container runs but its namespace cannot be read; not started", "id", id, "name", pu.Name, "error", err)
			return nil
		}
		e.pu, e.state = pu, stateRunning
		if err := m.emit(ctx, out, monitor.Start, pu); err != nil {
			return err
		}
		if ok, why := pu.Enforceable(); !ok {
			m.log.Info("container is not policed", "id", id, "name", pu.Name, "reason", why)
		}
		if want == statePaused {
			e.state = statePaused
			return m.emit(ctx, out, monitor.Pause, e.pu)
		}
	case e.state == stateRunning && want == statePaused:
		e.state = statePaused
		return m.emit(ctx, out, monitor.Pause, e.pu)
	case e.state == statePaused && want == stateRunning:
		e.state = stateRunning
		return m.emit(ctx, out, monitor.Unpause, e.pu)
	case e.state.live() && !want.live():
		e.state = stateStopped
		return m.emit(ctx, out, monitor.Stop, e.pu)
	}
	return nil
}

// forget handles a container the engine no longer has.
func (m *Monitor) forget(ctx context.Context, out chan<- monitor.Event, id string) error {
	e, ok := m.known[id]
	if !ok {
		return nil
	}
	delete(m.known, id)
	if e.state.live() {
		if err := m.emit(ctx, out, monitor.Stop, e.pu); err != nil {
			return err
		}
	}
	return m.emit(ctx, out, monitor.Destroy, e.pu)
}

func (m *Monitor) emit(ctx context.Context, out chan<- monitor.Event, t monitor.EventType, pu monitor.PU) error {
	ev := monitor.Event{Type: t, PU: pu, Time: time.Now(), Source: m.cfg.Name}
	m.log.Debug("event", "type", t.String(), "id", pu.ID, "name", pu.Name)
	select {
	case out <- ev:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// basePU is what is known of a container without running it: identity.
func (m *Monitor) basePU(c *container.InspectResponse) monitor.PU {
	name := strings.TrimPrefix(c.Name, "/")
	image := c.Config.Image
	return monitor.PU{
		ID:    c.ID,
		Name:  name,
		Kind:  monitor.KindDocker,
		Image: image,
		Tags:  monitor.BuildTags(m.log, c.ID, c.Config.Labels, monitor.SysTags(monitor.KindDocker, c.ID, name, image)),
	}
}

// runningPU adds what a running container has: PID, namespace, network.
func (m *Monitor) runningPU(ctx context.Context, c *container.InspectResponse) (monitor.PU, error) {
	pu := m.basePU(c)
	pu.PID = c.State.Pid
	pu.NetNS = fmt.Sprintf("/proc/%d/ns/net", pu.PID)
	mode := c.HostConfig.NetworkMode
	switch {
	case mode.IsHost():
		pu.Network = monitor.NetworkHost
		return pu, nil
	case mode.IsNone():
		pu.Network = monitor.NetworkNone
		return pu, nil
	case mode.IsContainer():
		pu.Network = monitor.NetworkContainer
		pu.SharesWith = mode.ConnectedContainer()
		// The engine may keep the name it was given: report the ID.
		if res, err := m.cli.ContainerInspect(ctx, pu.SharesWith, client.ContainerInspectOptions{}); err == nil {
			pu.SharesWith = res.Container.ID
		}
	default:
		pu.Network = monitor.NetworkBridge
		if c.NetworkSettings != nil {
			for _, ep := range c.NetworkSettings.Networks {
				if ep == nil {
					continue
				}
				for _, a := range []netip.Addr{ep.IPAddress, ep.GlobalIPv6Address} {
					if a.IsValid() && !a.IsUnspecified() {
						pu.IPs = append(pu.IPs, a.Unmap())
					}
				}
			}
		}
	}
	info, err := monitor.InspectNetns(pu.NetNS)
	if err != nil {
		return pu, err
	}
	pu.HostVeth, pu.HostVethIndex, pu.Bridge = info.HostVeth, info.HostVethIndex, info.Bridge
	if len(pu.IPs) == 0 {
		pu.IPs = info.IPs
	}
	if pu.Network == monitor.NetworkBridge {
		pu.MAC, pu.Addrs = engineIdentity(c.NetworkSettings, info)
		if pu.MAC == nil {
			// No endpoint with a MAC (a network driver that gives none):
			// what the namespace showed at start is the best there is.
			m.log.Warn("the engine gives the container no MAC; using its interface's", "id", c.ID, "mac", info.MAC)
			pu.MAC, pu.Addrs = info.MAC, info.Addrs
		}
	}
	slices.SortFunc(pu.IPs, netip.Addr.Compare)
	pu.IPs = slices.Compact(pu.IPs)
	return pu, nil
}

// engineIdentity is the container's MAC and addresses as the engine
// assigned them (the container has no say in them): those of the endpoint
// whose MAC the policed interface carries, or, if the container already
// changed its MAC, of its first endpoint (its frames are then dropped as
// spoofed, not let through). Its IPv6 link-local address is the one the
// kernel derives from the MAC (EUI-64), plus any the engine configured.
func engineIdentity(ns *container.NetworkSettings, info monitor.NetnsInfo) (net.HardwareAddr, []netip.Prefix) {
	if ns == nil {
		return nil, nil
	}
	var ep *network.EndpointSettings
	for _, name := range slices.Sorted(maps.Keys(ns.Networks)) {
		e := ns.Networks[name]
		if e == nil || len(e.MacAddress) != 6 {
			continue
		}
		if ep == nil || bytes.Equal(e.MacAddress, info.MAC) {
			ep = e
		}
		if bytes.Equal(e.MacAddress, info.MAC) {
			break
		}
	}
	if ep == nil {
		return nil, nil
	}
	mac := net.HardwareAddr(slices.Clone(ep.MacAddress))
	var addrs []netip.Prefix
	add := func(a netip.Addr, bits int) {
		if !a.IsValid() || a.IsUnspecified() {
			return
		}
		a = a.Unmap()
		if bits <= 0 || bits > a.BitLen() {
			bits = a.BitLen()
		}
		addrs = append(addrs, netip.PrefixFrom(a, bits))
	}
	add(ep.IPAddress, ep.IPPrefixLen)
	add(ep.GlobalIPv6Address, ep.GlobalIPv6PrefixLen)
	if ep.IPAMConfig != nil {
		for _, a := range ep.IPAMConfig.LinkLocalIPs {
			add(a, 0)
		}
	}
	add(netsetup.EUI64LinkLocal(mac), 64)
	return mac, addrs
}
