package docker

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/trireme-go/trireme/monitor"
	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/testenv/dockerenv"
	"github.com/vishvananda/netlink"
)

// recorder collects a monitor's events into one queue per PU ID.
type recorder struct {
	mu     sync.Mutex
	cond   *sync.Cond
	queues map[string][]monitor.Event
}

func newRecorder(events <-chan monitor.Event) *recorder {
	r := &recorder{queues: map[string][]monitor.Event{}}
	r.cond = sync.NewCond(&r.mu)
	go func() {
		for ev := range events {
			r.mu.Lock()
			r.queues[ev.PU.ID] = append(r.queues[ev.PU.ID], ev)
			r.cond.Broadcast()
			r.mu.Unlock()
		}
	}()
	return r
}

// next returns the next event of PU id, waiting up to 20s.
func (r *recorder) next(t *testing.T, id string) monitor.Event {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	timer := time.AfterFunc(20*time.Second, func() { r.mu.Lock(); r.cond.Broadcast(); r.mu.Unlock() })
	defer timer.Stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.queues[id]) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no event for %.12s", id)
		}
		r.cond.Wait()
	}
	ev := r.queues[id][0]
	r.queues[id] = r.queues[id][1:]
	return ev
}

// expect takes the next events of PU id and checks their types.
func (r *recorder) expect(t *testing.T, id string, types ...monitor.EventType) []monitor.Event {
	t.Helper()
	var evs []monitor.Event
	for _, want := range types {
		ev := r.next(t, id)
		if ev.Type != want {
			t.Fatalf("%s (%.12s): got %s, want %s (sequence %v)", ev.PU.Name, id, ev.Type, want, types)
		}
		if ev.Source != "docker" || ev.PU.ID != id || ev.PU.Kind != monitor.KindDocker {
			t.Fatalf("event %+v", ev)
		}
		evs = append(evs, ev)
	}
	return evs
}

// quiet checks that PU id gets no further event for a while.
func (r *recorder) quiet(t *testing.T, id string, d time.Duration) {
	t.Helper()
	time.Sleep(d)
	r.mu.Lock()
	defer r.mu.Unlock()
	if q := r.queues[id]; len(q) > 0 {
		t.Fatalf("unexpected event %s for %s", q[0].Type, q[0].PU.Name)
	}
}

var ifLink = regexp.MustCompile(`(?m)^\d+: eth0@if(\d+):`)

// checkRunning compares a Start event's PU with what the engine and the
// kernel say, independently of the monitor's code: PID and IP from the
// engine, the host veth's ifindex from `ip link` run in the container's
// namespace (eth0@ifN), the veth's bridge from netlink.
func checkRunning(t *testing.T, env *dockerenv.Env, pu monitor.PU, wantTags string) {
	t.Helper()
	c := env.Inspect(t, pu.ID)
	if pu.PID != c.State.Pid || pu.NetNS != "/proc/"+strconv.Itoa(c.State.Pid)+"/ns/net" {
		t.Errorf("%s: PID %d netns %s, engine says PID %d", pu.Name, pu.PID, pu.NetNS, c.State.Pid)
	}
	if got := pu.Tags.String(); got != wantTags {
		t.Errorf("%s: tags\n got %s\nwant %s", pu.Name, got, wantTags)
	}
	if pu.Network != monitor.NetworkBridge {
		t.Fatalf("%s: network %v", pu.Name, pu.Network)
	}
	var ip string
	for _, ep := range c.NetworkSettings.Networks {
		ip = ep.IPAddress.String()
	}
	if len(pu.IPs) != 1 || pu.IPs[0].String() != ip || !env.Subnet.Contains(pu.IPs[0]) {
		t.Errorf("%s: IPs %v, engine says %s", pu.Name, pu.IPs, ip)
	}
	// Who the container is on the link (the anti-spoofing rules' input)
	// comes from the engine: the endpoint's MAC and address with its
	// prefix, and the EUI-64 link-local address of that MAC.
	for _, ep := range c.NetworkSettings.Networks {
		want := []netip.Prefix{netip.PrefixFrom(ep.IPAddress, ep.IPPrefixLen), netip.PrefixFrom(netsetup.EUI64LinkLocal(net.HardwareAddr(ep.MacAddress)), 64)}
		if pu.MAC.String() != net.HardwareAddr(ep.MacAddress).String() || !slices.Equal(pu.Addrs, want) {
			t.Errorf("%s: MAC %s addrs %v, engine says %s %v", pu.Name, pu.MAC, pu.Addrs, net.HardwareAddr(ep.MacAddress), want)
		}
	}
	// stdout only: ip may warn on stderr that it cannot name the peer's
	// namespace ("Peer netns reference is invalid"), which is harmless.
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(pu.PID), "-n", "ip", "-o", "link", "show", "eth0").Output()
	if err != nil {
		t.Fatalf("ip link in %s: %v %s", pu.Name, err, out)
	}
	m := ifLink.FindSubmatch(out)
	if m == nil {
		t.Fatalf("ip link output %q", out)
	}
	if string(m[1]) != strconv.Itoa(pu.HostVethIndex) {
		t.Errorf("%s: host veth index %d, kernel says %s", pu.Name, pu.HostVethIndex, m[1])
	}
	l, err := netlink.LinkByName(pu.HostVeth)
	if err != nil {
		t.Fatalf("%s: host veth %q: %v", pu.Name, pu.HostVeth, err)
	}
	br, _ := netlink.LinkByName(env.Bridge)
	if pu.Bridge != env.Bridge {
		t.Errorf("%s: bridge %q, want %s", pu.Name, pu.Bridge, env.Bridge)
	}
	if l.Attrs().Index != pu.HostVethIndex || l.Type() != "veth" || br == nil || l.Attrs().MasterIndex != br.Attrs().Index {
		t.Errorf("%s: host veth %s (index %d, type %s, master %d) is not a port of %s", pu.Name, pu.HostVeth, l.Attrs().Index, l.Type(), l.Attrs().MasterIndex, env.Bridge)
	}
	if ok, why := pu.Enforceable(); !ok {
		t.Errorf("%s: not enforceable: %s", pu.Name, why)
	}
}

func tags(id, name string, labels ...string) string {
	s := fmt.Sprintf("@sys:id=%s,@sys:image=%s,@sys:kind=docker,@sys:name=%s", id, dockerenv.Image, name)
	for _, l := range labels {
		s += "," + l
	}
	return s
}

func TestDockerMonitor(t *testing.T) {
	start := time.Now()
	env := dockerenv.Start(t)
	t.Logf("engine ready in %v", time.Since(start))
	phase := time.Now()
	lap := func(what string) {
		t.Logf("%-28s %v", what, time.Since(phase).Round(time.Millisecond))
		phase = time.Now()
	}

	// Before the monitor runs: a running container (with a label that
	// tries to claim a system tag) and one that was only created.
	early := env.Run(t, dockerenv.Container{Name: "early", Labels: map[string]string{"app": "db", "@sys:name": "web"}})
	createdOnly := env.Run(t, dockerenv.Container{Name: "created-only", Labels: map[string]string{"app": "batch"}, CreateOnly: true})

	mon, err := New(Config{Host: env.Host, MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan monitor.Event, 64)
	done := make(chan error, 1)
	go func() { done <- mon.Run(ctx, events) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		close(events)
	}()
	rec := newRecorder(events)

	t.Run("resync", func(t *testing.T) {
		evs := rec.expect(t, early, monitor.Create, monitor.Start)
		if evs[0].PU.PID != 0 || evs[0].PU.NetNS != "" {
			t.Errorf("create event carries runtime state: %+v", evs[0].PU)
		}
		checkRunning(t, env, evs[1].PU, tags(early, "early", "app=db"))
		rec.expect(t, createdOnly, monitor.Create)
	})
	lap("resync")

	var web string
	t.Run("start after monitor", func(t *testing.T) {
		web = env.Run(t, dockerenv.Container{Name: "web", Labels: map[string]string{"app": "web", "env": "prod"}})
		evs := rec.expect(t, web, monitor.Create, monitor.Start)
		checkRunning(t, env, evs[1].PU, tags(web, "web", "app=web", "env=prod"))
	})
	lap("start after monitor")

	t.Run("pause unpause", func(t *testing.T) {
		env.Do(t, "pause", func(ctx context.Context, c *client.Client) error {
			_, err := c.ContainerPause(ctx, web, client.ContainerPauseOptions{})
			return err
		})
		p := rec.expect(t, web, monitor.Pause)[0].PU
		env.Do(t, "unpause", func(ctx context.Context, c *client.Client) error {
			_, err := c.ContainerUnpause(ctx, web, client.ContainerUnpauseOptions{})
			return err
		})
		u := rec.expect(t, web, monitor.Unpause)[0].PU
		if p.PID != u.PID || p.HostVeth != u.HostVeth || p.PID == 0 {
			t.Errorf("pause/unpause changed the PU: %+v / %+v", p, u)
		}
	})
	lap("pause unpause")

	t.Run("restart", func(t *testing.T) {
		before := env.Inspect(t, web).State.Pid
		env.Do(t, "restart", func(ctx context.Context, c *client.Client) error {
			timeout := 1
			_, err := c.ContainerRestart(ctx, web, client.ContainerRestartOptions{Timeout: &timeout})
			return err
		})
		evs := rec.expect(t, web, monitor.Stop, monitor.Start)
		if evs[0].PU.PID != before || evs[1].PU.PID == before {
			t.Errorf("restart: stop PID %d start PID %d, PID before %d", evs[0].PU.PID, evs[1].PU.PID, before)
		}
		checkRunning(t, env, evs[1].PU, tags(web, "web", "app=web", "env=prod"))
	})
	lap("restart")

	t.Run("stop destroy", func(t *testing.T) {
		env.Do(t, "stop", func(ctx context.Context, c *client.Client) error {
			timeout := 1
			_, err := c.ContainerStop(ctx, web, client.ContainerStopOptions{Timeout: &timeout})
			return err
		})
		rec.expect(t, web, monitor.Stop)
		env.Do(t, "remove", func(ctx context.Context, c *client.Client) error {
			_, err := c.ContainerRemove(ctx, web, client.ContainerRemoveOptions{})
			return err
		})
		rec.expect(t, web, monitor.Destroy)
		// Force-removing a running container: stop, then destroy.
		env.Do(t, "force remove", func(ctx context.Context, c *client.Client) error {
			_, err := c.ContainerRemove(ctx, createdOnly, client.ContainerRemoveOptions{Force: true})
			return err
		})
		rec.expect(t, createdOnly, monitor.Destroy)
	})
	lap("stop destroy")

	// Containers the daemon cannot police are reported, with why.
	t.Run("host none container networks", func(t *testing.T) {
		tests := []struct {
			name, network string
			want          monitor.Network
			why           string
		}{
			{"hostnet", "host", monitor.NetworkHost, "host network"},
			{"nonet", "none", monitor.NetworkNone, "no network"},
			{"sidecar", "container:early", monitor.NetworkContainer, "shares the network namespace of container " + early},
		}
		for _, tc := range tests {
			id := env.Run(t, dockerenv.Container{Name: tc.name, Network: tc.network, Labels: map[string]string{"app": tc.name},
				Cmd: []string{"probe", "serve", "--tcp", "8080", "--name", tc.name}})
			pu := rec.expect(t, id, monitor.Create, monitor.Start)[1].PU
			ok, why := pu.Enforceable()
			if pu.Network != tc.want || ok || !strings.HasPrefix(why, tc.why) {
				t.Errorf("%s: network %v enforceable %v %q, want %v false %q", tc.name, pu.Network, ok, why, tc.want, tc.why)
			}
			if pu.PID != env.Inspect(t, id).State.Pid || pu.Tags.String() != tags(id, tc.name, "app="+tc.name) {
				t.Errorf("%s: PU %+v", tc.name, pu)
			}
			switch tc.want {
			case monitor.NetworkHost, monitor.NetworkNone:
				if pu.HostVeth != "" || len(pu.IPs) != 0 {
					t.Errorf("%s: veth %q IPs %v", tc.name, pu.HostVeth, pu.IPs)
				}
			case monitor.NetworkContainer:
				// Same namespace, so the same veth and address as early.
				e := env.Inspect(t, early)
				if pu.HostVeth == "" || len(pu.IPs) != 1 || pu.IPs[0] != e.NetworkSettings.Networks["bridge"].IPAddress {
					t.Errorf("%s: veth %q IPs %v", tc.name, pu.HostVeth, pu.IPs)
				}
			}
		}
	})
	lap("host/none/container nets")

	// An engine stopped cleanly stops its containers (and may or may not
	// get their die events out before it goes); the monitor reconnects and
	// sees the restart-policy container come back.
	t.Run("engine stop and start", func(t *testing.T) {
		always := env.Run(t, dockerenv.Container{Name: "always", Labels: map[string]string{"app": "web"}, Restart: "always"})
		first := rec.expect(t, always, monitor.Create, monitor.Start)[1].PU
		if err := env.StopDaemon(); err != nil {
			t.Fatal(err)
		}
		if err := env.StartDaemon(); err != nil {
			t.Fatal(err)
		}
		// Whether the monitor saw the die events before the engine went or
		// found out at the resync, the lifecycle is the same.
		rec.expect(t, early, monitor.Stop)
		pu := rec.expect(t, always, monitor.Stop, monitor.Start)[1].PU
		if pu.PID == first.PID {
			t.Errorf("always: same PID %d after engine restart", pu.PID)
		}
		checkRunning(t, env, pu, tags(always, "always", "app=web"))
		env.Do(t, "start early", func(ctx context.Context, c *client.Client) error {
			_, err := c.ContainerStart(ctx, early, client.ContainerStartOptions{})
			return err
		})
		checkRunning(t, env, rec.expect(t, early, monitor.Start)[0].PU, tags(early, "early", "app=db"))
	})
	lap("engine stop/start")

	// An engine killed sends nothing: what changed while it was away is
	// found by the resync after reconnecting (without live-restore the
	// engine stops the orphaned containers and restarts "always").
	t.Run("engine killed and back", func(t *testing.T) {
		always := env.Run(t, dockerenv.Container{Name: "always2", Labels: map[string]string{"app": "web"}, Restart: "always"})
		first := rec.expect(t, always, monitor.Create, monitor.Start)[1].PU
		env.KillDaemon()
		// The monitor cannot know anything while the engine is away.
		rec.quiet(t, always, 300*time.Millisecond)
		rec.quiet(t, early, 0)
		if err := env.StartDaemon(); err != nil {
			t.Fatal(err)
		}
		rec.expect(t, early, monitor.Stop)
		evs := rec.expect(t, always, monitor.Stop, monitor.Start)
		if evs[0].PU.PID != first.PID || evs[1].PU.PID == first.PID {
			t.Errorf("always2: PIDs %d -> %d, first %d", evs[0].PU.PID, evs[1].PU.PID, first.PID)
		}
		checkRunning(t, env, evs[1].PU, tags(always, "always2", "app=web"))
		// The event subscription is back.
		after := env.Run(t, dockerenv.Container{Name: "after", Labels: map[string]string{"app": "web"}})
		checkRunning(t, env, rec.expect(t, after, monitor.Create, monitor.Start)[1].PU, tags(after, "after", "app=web"))
	})
	lap("engine killed and back")
}

// With no engine, Run keeps retrying quietly and returns when cancelled.
func TestDockerMonitorNoEngine(t *testing.T) {
	mon, err := New(Config{Host: "unix:///nonexistent/docker.sock", MinBackoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	events := make(chan monitor.Event, 1)
	if err := mon.Run(ctx, events); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(events) != 0 {
		t.Errorf("event without an engine: %v", <-events)
	}
}
