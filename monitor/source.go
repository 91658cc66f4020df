package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrExists is returned when a PU with the same ID (or namespace) is
// already known to a Source.
var ErrExists = errors.New("PU already exists")

// ErrUnknown is returned for an ID a Source does not know.
var ErrUnknown = errors.New("unknown PU")

// Source is a Monitor fed by calls rather than by a runtime: the daemon's
// control API attaches and detaches namespaces through it (`trireme pu
// attach`), and `trireme run` adds the PUs it creates. Calls block until
// Run has handed the event on (or their ctx ends), so when Attach returns
// the daemon has the event in its queue.
type Source struct {
	name string
	kind Kind
	log  *slog.Logger
	ch   chan Event

	mu  sync.Mutex
	pus map[string]PU
}

// NewSource returns a Source whose PUs are of the given kind.
func NewSource(name string, kind Kind, log *slog.Logger) *Source {
	if log == nil {
		log = slog.Default()
	}
	return &Source{name: name, kind: kind, log: log.With("monitor", name), ch: make(chan Event), pus: map[string]PU{}}
}

func (s *Source) Name() string { return s.name }

// Run forwards the Source's events until ctx is done.
func (s *Source) Run(ctx context.Context, events chan<- Event) error {
	for {
		select {
		case ev := <-s.ch:
			if send(ctx, events, ev) != nil {
				return nil
			}
		case <-ctx.Done():
			return nil
		}
	}
}

func (s *Source) emit(ctx context.Context, t EventType, pu PU) error {
	ev := Event{Type: t, PU: pu, Time: time.Now(), Source: s.name}
	select {
	case s.ch <- ev:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s %s: %w", t, pu.ID, ctx.Err())
	}
}

// List returns the PUs the Source knows, by ID.
func (s *Source) List() []PU {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := slices.Sorted(maps.Keys(s.pus))
	out := make([]PU, len(ids))
	for i, id := range ids {
		out[i] = s.pus[id]
	}
	return out
}

// Add registers a running PU and emits its Start event. Its Kind is the
// Source's; its tags must already be built (BuildTags).
func (s *Source) Add(ctx context.Context, pu PU) error {
	if pu.ID == "" {
		return errors.New("PU without an ID")
	}
	pu.Kind = s.kind
	s.mu.Lock()
	if _, dup := s.pus[pu.ID]; dup {
		s.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrExists, pu.ID)
	}
	if pu.NetNS != "" {
		for _, o := range s.pus {
			if o.NetNS != "" && sameNetns(o.NetNS, pu.NetNS) {
				s.mu.Unlock()
				return fmt.Errorf("%w: namespace %s is already PU %s", ErrExists, pu.NetNS, o.ID)
			}
		}
	}
	s.pus[pu.ID] = pu
	s.mu.Unlock()
	if err := s.emit(ctx, Start, pu); err != nil {
		s.mu.Lock()
		delete(s.pus, pu.ID)
		s.mu.Unlock()
		return err
	}
	return nil
}

// Remove emits Stop and Destroy for a PU and forgets it.
func (s *Source) Remove(ctx context.Context, id string) error {
	s.mu.Lock()
	pu, ok := s.pus[id]
	delete(s.pus, id)
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknown, id)
	}
	if err := s.emit(ctx, Stop, pu); err != nil {
		return err
	}
	return s.emit(ctx, Destroy, pu)
}

// AttachRequest describes a namespace to police as a PU.
type AttachRequest struct {
	// NetNS is a name under /var/run/netns or a path (/proc/PID/ns/net).
	NetNS string
	// Name defaults to the namespace name (pid-N for /proc/N/ns/net).
	Name   string
	Labels map[string]string
}

// Attach builds a PU from an existing namespace (its host-side veth and
// addresses read through netlink), registers it and emits Start. The PU ID
// is its name, which must be unique in the Source.
func (s *Source) Attach(ctx context.Context, req AttachRequest) (PU, error) {
	path, err := NetnsPath(req.NetNS)
	if err != nil {
		return PU{}, err
	}
	pu, err := NetnsPU(s.log, s.kind, req.Name, path, req.Labels)
	if err != nil {
		return PU{}, err
	}
	if err := s.Add(ctx, pu); err != nil {
		return PU{}, err
	}
	s.log.Info("attached", "pu", pu.ID, "netns", pu.NetNS, "veth", pu.HostVeth, "ips", pu.IPs, "tags", pu.Tags.String())
	return pu, nil
}

// NetnsPU describes the namespace at path (a checked path, see NetnsPath)
// as a PU of the given kind named name (default: derived from the path).
func NetnsPU(log *slog.Logger, kind Kind, name, path string, labels map[string]string) (PU, error) {
	pid := pidOf(path)
	if name == "" {
		name = DefaultName(path)
	}
	info, err := InspectNetns(path)
	if err != nil {
		return PU{}, err
	}
	pu := PU{
		ID: name, Name: name, Kind: kind, PID: pid, NetNS: path,
		HostVeth: info.HostVeth, HostVethIndex: info.HostVethIndex, Bridge: info.Bridge, IPs: info.IPs,
		MAC: info.MAC, Addrs: hostAddrs(info.Addrs, info.IPs),
		Tags: BuildTags(log, name, labels, SysTags(kind, name, name, "")),
	}
	switch {
	case info.HostVeth != "":
		pu.Network = NetworkBridge
	case len(info.IPs) == 0:
		pu.Network = NetworkNone
	default:
		// Addresses but no veth toward us (macvlan, a veth into another
		// namespace): report it as bridged; Enforceable says why it is not.
		pu.Network = NetworkBridge
	}
	return pu, nil
}

// hostAddrs is what a namespace's PU may send from: the addresses of its
// veth (with their prefixes) and its other interfaces' global addresses
// (as host prefixes: a PU may send from any address it holds).
func hostAddrs(veth []netip.Prefix, ips []netip.Addr) []netip.Prefix {
	out := slices.Clone(veth)
	for _, ip := range ips {
		if !slices.ContainsFunc(out, func(p netip.Prefix) bool { return p.Addr() == ip }) {
			out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
		}
	}
	return out
}

// pidOf is N for /proc/N/ns/net, 0 otherwise.
func pidOf(path string) int {
	if rest, ok := strings.CutPrefix(path, "/proc/"); ok {
		if n, err := strconv.Atoi(strings.TrimSuffix(rest, "/ns/net")); err == nil && n > 0 {
			return n
		}
	}
	return 0
}

// DefaultName is the name of a PU attached without one: pid-N for
// /proc/N/ns/net, the file name otherwise (a namespace's name).
func DefaultName(path string) string {
	if pid := pidOf(path); pid > 0 {
		return "pid-" + strconv.Itoa(pid)
	}
	return filepath.Base(path)
}
