package perf

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/trireme-go/trireme/ipproto"
	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/netsetup/steer"
	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/perf/loadgen"
)

// ScaleConfig: how attaching, detaching and restarting cost as the number of
// PUs on one node grows. One daemon on a one-node topology; Max() extra PU
// namespaces (bare: a veth on the node bridge, an address) are attached one
// after another through the control API, the daemon is restarted with all
// of them, then they are detached one after another.
type ScaleConfig struct {
	// Sizes are the PU counts at which the cost is reported (e.g. 10, 100,
	// 500, 1000): the mean of the Window attaches that bring the count up
	// to the size, and of the Window detaches that start from it.
	Sizes  []int
	Window int // default 10
	// Variant runs the daemon; its Setup attaches the topology's client
	// and server (counted among the PUs).
	Variant *Daemon
	// Flows, if not 0, are written into the kernel's authorized sets of
	// the PUs (spread evenly) while the daemon is stopped for the restart:
	// the restarted daemon keeps them and gives them back to its
	// enforcer.
	Flows int
	// Rounds and Duration: at each size, the RTT and 1-stream bulk between
	// the client and server PUs are measured Rounds times for Duration,
	// interleaved with the kernel path on a topology of its own (defaults
	// 3 and 1 s).
	Rounds   int
	Duration time.Duration
	Progress func(string)
}

// ScaleRow is the cost at one PU count.
type ScaleRow struct {
	PUs int `json:"pus"`
	// Attach and Detach are the mean times per PU through the control API,
	// in milliseconds.
	AttachMs Value `json:"attachMs"`
	DetachMs Value `json:"detachMs"`
	// AttachMaxMs is the slowest attach of the window.
	AttachMaxMs Value `json:"attachMaxMs"`
	DetachMaxMs Value `json:"detachMaxMs"`
	// With Size PUs attached: the daemon's RSS, its nftables tables,
	// chains and rules, and the cost of an established flow between two
	// of the PUs against the kernel path.
	RSSMiB Value    `json:"daemonRssMiB"`
	Nft    NftCount `json:"nftables"`
	Path   PathCost `json:"path"`
}

// ScaleResult is the outcome of a scale run.
type ScaleResult struct {
	Machine Machine   `json:"machine"`
	Started time.Time `json:"started"`
	Elapsed string    `json:"elapsed"`
	Window  int       `json:"window"`
	// Rounds of Duration each of the RTT and bulk figures per size.
	Rounds   int        `json:"pathRounds"`
	Duration string     `json:"pathDuration"`
	Rows     []ScaleRow `json:"rows"`
	// RestartPUs PUs were attached when the daemon was stopped (SIGTERM)
	// and started again; RestartMs is from the new process's start until
	// its control API answered with every PU restored, and a new
	// connection between the client and server PUs worked after it.
	RestartPUs int   `json:"restartPUs"`
	RestartMs  Value `json:"restartMs"`
	// RestartFlows were in the kernel's authorized sets at the restart;
	// FlowsAfter is what the restarted daemon's enforcer tracks.
	RestartFlows int      `json:"restartFlows"`
	FlowsAfter   int      `json:"flowsAfter"`
	Notes        []string `json:"notes,omitempty"`
}

// extraNet addresses the scale PUs (on the node bridge, beside the
// topology's own subnet: the daemon attaches any namespace whose veth is a
// port of its bridge).
var extraNet = netip.MustParsePrefix("10.202.0.0/16")

// RunScale measures attach, detach and restart costs. Whatever it set up is
// torn down before it returns.
func RunScale(ctx context.Context, cfg ScaleConfig) (res *ScaleResult, err error) {
	if cfg.Window <= 0 {
		cfg.Window = 10
	}
	if cfg.Progress == nil {
		cfg.Progress = func(string) {}
	}
	if cfg.Rounds <= 0 {
		cfg.Rounds = 3
	}
	if cfg.Duration <= 0 {
		cfg.Duration = time.Second
	}
	if len(cfg.Sizes) == 0 || cfg.Variant == nil {
		return nil, errors.New("perf: scale: no sizes or no daemon")
	}
	sizes := slices.Clone(cfg.Sizes)
	slices.Sort(sizes)
	max := sizes[len(sizes)-1]
	if sizes[0] < 3 {
		return nil, fmt.Errorf("perf: scale: sizes must be at least 3 (the client and server PUs count)")
	}
	if max-2 > 65000 {
		return nil, fmt.Errorf("perf: scale: at most 65002 PUs")
	}
	res = &ScaleResult{Machine: ThisMachine(), Started: time.Now(), Window: cfg.Window, Rounds: cfg.Rounds, Duration: cfg.Duration.String()}
	if err := CleanStale(); err != nil {
		cfg.Progress(fmt.Sprintf("warning: %v", err))
	}
	topo, err := NewTopology(OneNode, "scale")
	if err != nil {
		return nil, err
	}
	s := &setup{v: cfg.Variant, topo: topo}
	defer func() {
		if cerr := s.close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	cfg.Progress("starting the daemon")
	if err := cfg.Variant.Setup(ctx, topo); err != nil {
		return nil, err
	}
	if err := s.probe(ctx); err != nil {
		return nil, err
	}
	cfg.Progress("setting up the kernel path")
	kernel, err := kernelSetup(ctx)
	if kernel != nil {
		defer func() {
			if cerr := kernel.close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}()
	}
	if err != nil {
		return nil, err
	}
	cfg.Progress(fmt.Sprintf("creating %d PU namespaces", max-2))
	extra, err := topo.addBarePUs(max-2, extraNet)
	if err != nil {
		return nil, err
	}
	client := cfg.Variant.Client(0)
	pid := cfg.Variant.EnforcerPIDs()[0]
	// At each size: the daemon's memory, its rules, the per-packet cost.
	sampled := map[int]ScaleRow{}
	sample := func(n int) {
		row := ScaleRow{PUs: n, RSSMiB: Value(math.NaN())}
		if p, err := loadgen.ReadProc(pid); err == nil {
			row.RSSMiB = Value(float64(p.RSS) / (1 << 20))
		} else {
			res.Notes = append(res.Notes, fmt.Sprintf("%d PUs: daemon: %v", n, err))
		}
		var err error
		if row.Nft, err = countNft(topo.Nodes[0].Netns, false); err != nil {
			res.Notes = append(res.Notes, fmt.Sprintf("%d PUs: %v", n, err))
		}
		var notes []string
		row.Path, notes = comparePaths(ctx, kernel, s, cfg.Rounds, cfg.Duration, fmt.Sprintf("%d PUs", n), cfg.Progress)
		res.Notes = append(res.Notes, notes...)
		sampled[n] = row
	}

	// Attach: PU number i (counting the client and server) costs attach[i].
	attach := make([]time.Duration, max+1)
	for i, p := range extra {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n := i + 3
		if n%50 == 0 {
			cfg.Progress(fmt.Sprintf("attaching PU %d/%d", n, max))
		}
		start := time.Now()
		if _, err := client.AttachPU(node.AttachRequest{NetNS: p.Netns, Name: p.Name, Labels: p.Labels}); err != nil {
			return nil, fmt.Errorf("perf: attach %s: %w", p.Name, err)
		}
		attach[n] = time.Since(start)
		if slices.Contains(sizes, n) {
			sample(n)
		}
	}

	// Detach: going from n PUs to n-1 costs detach[n].
	detach := make([]time.Duration, max+1)
	for i := len(extra) - 1; i >= 0; i-- {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n := i + 3
		if n%50 == 0 {
			cfg.Progress(fmt.Sprintf("detaching, %d PUs left", n))
		}
		start := time.Now()
		if err := client.DetachPU("netns-" + extra[i].Name); err != nil {
			return nil, fmt.Errorf("perf: detach %s: %w", extra[i].Name, err)
		}
		detach[n] = time.Since(start)
	}

	// Restart with every PU attached again (the base code of this test
	// could not restart at all, so it comes last).
	for i, p := range extra {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if (i+3)%50 == 0 {
			cfg.Progress(fmt.Sprintf("attaching again, PU %d/%d", i+3, max))
		}
		if _, err := client.AttachPU(node.AttachRequest{NetNS: p.Netns, Name: p.Name, Labels: p.Labels}); err != nil {
			return nil, fmt.Errorf("perf: attach %s: %w", p.Name, err)
		}
	}
	cfg.Progress(fmt.Sprintf("restarting the daemon with %d PUs", max))
	res.RestartPUs = max
	res.RestartFlows = cfg.Flows
	var between func() error
	if cfg.Flows > 0 {
		between = func() error {
			cfg.Progress(fmt.Sprintf("writing %d authorized flows into the kernel", cfg.Flows))
			return authorizeFlows(topo.Nodes[0], append(topo.PUs(), extra...), cfg.Flows)
		}
	}
	if d, err := cfg.Variant.restart(ctx, 0, max, between); err != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("restart: %v", err))
		res.RestartMs = Value(math.NaN())
	} else {
		res.RestartMs = Value(ms(d))
		if st, err := cfg.Variant.Client(0).Stats(); err == nil {
			res.FlowsAfter = st.Flows
		}
		if err := s.probe(ctx); err != nil {
			res.Notes = append(res.Notes, fmt.Sprintf("after the restart: %v", err))
		}
	}

	for _, size := range sizes {
		w := min(cfg.Window, size-2)
		row := sampled[size]
		row.AttachMs, row.AttachMaxMs = window(attach[size-w+1 : size+1])
		row.DetachMs, row.DetachMaxMs = window(detach[size-w+1 : size+1])
		res.Rows = append(res.Rows, row)
	}
	res.Elapsed = time.Since(res.Started).Round(time.Millisecond).String()
	return res, nil
}

func window(ds []time.Duration) (mean, max Value) {
	var sum, mx time.Duration
	for _, d := range ds {
		sum += d
		mx = maxDur(mx, d)
	}
	return Value(ms(sum / time.Duration(len(ds)))), Value(ms(mx))
}

func maxDur(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// probe waits until a new connection from the client to the server PU
// succeeds (at most 10 s).
func (s *setup) probe(ctx context.Context) error {
	if s.client == nil {
		srvNs, err := netsetup.OpenNetnsPath(s.topo.Server.Netns)
		if err != nil {
			return err
		}
		s.ns = append(s.ns, func() { srvNs.Close() })
		cliNs, err := netsetup.OpenNetnsPath(s.topo.Client.Netns)
		if err != nil {
			return err
		}
		s.ns = append(s.ns, func() { cliNs.Close() })
		if s.server, err = loadgen.Listen(srvNs, netip.AddrPortFrom(s.topo.Server.Addr, DefaultPort)); err != nil {
			return err
		}
		if s.client, err = loadgen.NewClient(cliNs, s.server.Addr()); err != nil {
			return err
		}
	}
	return s.client.Probe(ctx, 10*time.Second)
}

// addBarePUs creates n PU namespaces on the first node's bridge, each with
// one address of subnet and nothing else (no route: they are there to be
// attached, not to talk).
func (t *Topology) addBarePUs(n int, subnet netip.Prefix) ([]*PU, error) {
	nd := t.Nodes[0]
	base := t.Client.Netns[:len(t.Client.Netns)-len("client")]
	addr := subnet.Addr().Next().Next() // the first is left for a gateway
	out := make([]*PU, 0, n)
	for i := range n {
		p := &PU{Name: fmt.Sprintf("s%d", i), Netns: fmt.Sprintf("%ss%d", base, i), Node: nd,
			Labels: map[string]string{"app": "scale"}, Addr: addr}
		addr = addr.Next()
		if err := t.newNetns(p.Netns); err != nil {
			return nil, err
		}
		if err := joinBare(p, subnet.Bits()); err != nil {
			return nil, fmt.Errorf("perf: join %s: %w", p.Name, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func joinBare(p *PU, bits int) error {
	puNs, err := netns.GetFromName(p.Netns)
	if err != nil {
		return err
	}
	defer puNs.Close()
	host := "v" + p.Name
	err = withHandle(p.Node.Netns, func(h *netlink.Handle) error {
		br, err := h.LinkByName(p.Node.Bridge)
		if err != nil {
			return err
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = host
		attrs.MasterIndex = br.Attrs().Index
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: puLink, PeerNamespace: netlink.NsFd(puNs)}); err != nil {
			return err
		}
		l, err := h.LinkByName(host)
		if err != nil {
			return err
		}
		return h.LinkSetUp(l)
	})
	if err != nil {
		return err
	}
	return withHandle(p.Netns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(puLink)
		if err != nil {
			return err
		}
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(p.Addr, bits))}); err != nil {
			return err
		}
		return h.LinkSetUp(l)
	})
}

// authorizeFlows writes n TCP flows into the authorized sets of the
// node's PUs (as a daemon would have: both directions, 5-minute timeout),
// spread evenly, from each PU's address to addresses outside the node.
func authorizeFlows(n *Node, pus []*PU, flows int) error {
	ns, err := netns.GetFromName(n.Netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	s, err := steer.Open(steer.Config{Node: n.Name, NetNS: int(ns)})
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.Adopt(); err != nil {
		return err
	}
	b := s.NewBatch()
	for i := range flows {
		p := pus[i%len(pus)]
		k := i / len(pus)
		b.Authorize(node.SteerName("netns-"+p.Name), steer.Tuple{
			Src: p.Addr, Dst: netip.AddrFrom4([4]byte{198, 18, byte(k >> 8), byte(k)}),
			Proto: ipproto.TCP, SrcPort: uint16(1024 + k%60000), DstPort: 443,
		}, 5*time.Minute)
	}
	return b.Commit()
}
