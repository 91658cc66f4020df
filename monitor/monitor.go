// Package monitor turns runtime events (a Docker container starting, a
// network namespace attached through the control API, a process launched by
// `trireme run`) into a standard PU runtime and lifecycle events that the node
// daemon consumes. Monitors know nothing of the dataplane: they describe what
// runs where (PID, network namespace, host-side veth, IPs, tags); the daemon
// decides what to enforce.
package monitor

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/trireme-go/trireme/identity"
)

// Monitor is a source of PU events. Run sends events until ctx is done or the
// source fails for good, and returns nil when ctx ended it. The daemon runs
// any number of monitors into one channel; Run must not close events.
type Monitor interface {
	Name() string
	Run(ctx context.Context, events chan<- Event) error
}

// Kind is the kind of runtime a PU comes from.
type Kind uint8

const (
	KindNetns Kind = iota + 1
	KindDocker
	KindProcess
)

func (k Kind) String() string {
	switch k {
	case KindNetns:
		return "netns"
	case KindDocker:
		return "docker"
	case KindProcess:
		return "process"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Network says how a PU is connected, which decides whether the daemon can
// police it (see Enforceable).
type Network uint8

const (
	// NetworkUnknown: the PU is not running (no namespace to look at).
	NetworkUnknown Network = iota
	// NetworkBridge: a namespace of its own joined to a bridge by a veth
	// pair (Docker's default and user-defined bridges, the node bridge).
	NetworkBridge
	// NetworkHost: the PU shares the host's network stack.
	NetworkHost
	// NetworkNone: a namespace of its own with only loopback.
	NetworkNone
	// NetworkContainer: the PU shares another container's namespace
	// (docker --network container:X); its traffic is that container's.
	NetworkContainer
)

func (n Network) String() string {
	switch n {
	case NetworkUnknown:
		return "unknown"
	case NetworkBridge:
		return "bridge"
	case NetworkHost:
		return "host"
	case NetworkNone:
		return "none"
	case NetworkContainer:
		return "container"
	}
	return fmt.Sprintf("network(%d)", uint8(n))
}

// PU is the runtime description of a processing unit. Values are copied
// into events; the daemon may keep them.
type PU struct {
	// ID is unique within its kind: the full container ID for Docker, the
	// attach ID for namespaces, the PU name for processes.
	ID   string
	Name string
	Kind Kind
	// PID is the PU's init process (0 when not running or unknown).
	PID int
	// NetNS is a path that opens the PU's network namespace
	// (/proc/PID/ns/net, /run/netns/NAME); "" when not running.
	NetNS   string
	Network Network
	// SharesWith is the container whose namespace a NetworkContainer PU uses.
	SharesWith string
	// HostVeth and HostVethIndex name the host side of the veth pair that
	// joins the namespace to its bridge ("" / 0 when there is none).
	HostVeth      string
	HostVethIndex int
	// Bridge is the bridge the host-side veth is a port of (Docker's
	// docker0/br-*, or the node bridge); the daemon injects traffic away
	// from the PU through a port on it.
	Bridge string
	IPs    []netip.Addr
	// MAC and Addrs are who the PU is on its link (the namespace end of
	// the policed veth): every frame it sends must carry this MAC and one
	// of these addresses (with their on-link prefix length, link-local
	// included), or the steering rules drop it. Docker: from the engine
	// (the container's endpoint); a namespace: read from its interface
	// when it is attached.
	MAC   net.HardwareAddr
	Addrs []netip.Prefix
	// Tags is the PU's identity: user tags from labels plus @sys: tags.
	Tags identity.Tags
	// Image is the image the container runs (Docker only).
	Image string
}

// Enforceable reports whether the daemon can police the PU through its
// host-side veth, and if not, why. Host-network PUs share the node's stack,
// no-network PUs have nothing to police, container-network PUs are policed
// as the container whose namespace they share.
func (p *PU) Enforceable() (bool, string) {
	switch p.Network {
	case NetworkBridge:
		if p.HostVeth == "" {
			return false, "no host-side veth found for the namespace"
		}
		return true, ""
	case NetworkHost:
		return false, "host network: shares the node's network stack"
	case NetworkNone:
		return false, "no network: only loopback, nothing to police"
	case NetworkContainer:
		return false, "shares the network namespace of container " + p.SharesWith
	}
	return false, "not running"
}

// EventType is a PU lifecycle step.
type EventType uint8

const (
	// Create: the PU exists but does not run yet (no namespace).
	Create EventType = iota + 1
	// Start: the PU runs; PU carries PID, NetNS, veth and IPs.
	Start
	// Stop: the PU stopped (its namespace is gone or going).
	Stop
	// Pause: the PU is frozen; it keeps its namespace and its policy.
	Pause
	// Unpause: the PU runs again, same namespace.
	Unpause
	// Destroy: the PU is gone for good; forget it.
	Destroy
)

func (t EventType) String() string {
	switch t {
	case Create:
		return "create"
	case Start:
		return "start"
	case Stop:
		return "stop"
	case Pause:
		return "pause"
	case Unpause:
		return "unpause"
	case Destroy:
		return "destroy"
	}
	return fmt.Sprintf("event(%d)", uint8(t))
}

// Event is one lifecycle step of a PU. PU is the full runtime as last seen
// (for Stop and Destroy: as it was while running).
type Event struct {
	Type   EventType
	PU     PU
	Time   time.Time
	Source string // the monitor's Name
}

func (e Event) String() string {
	return fmt.Sprintf("%s %s %s (%s)", e.Source, e.Type, e.PU.ID, e.PU.Name)
}

// send delivers ev unless ctx ends first.
func send(ctx context.Context, events chan<- Event, ev Event) error {
	select {
	case events <- ev:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
