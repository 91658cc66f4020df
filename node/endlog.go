package node

import (
	"errors"
	"hash/fnv"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trireme-go/trireme/dataplane"
	"github.com/trireme-go/trireme/netsetup/nflog"
	"github.com/trireme-go/trireme/netsetup/steer"
	"github.com/trireme-go/trireme/netsetup/tap"
	"github.com/trireme-go/trireme/netsetup/vnet"
)

// Connection ends in the kernel: the steering passes the FINs and RSTs of
// the flows it carries and logs them to the daemon's NFLOG group
// (netsetup/steer's end rules); endLogLoop hands each to the enforcer of its
// PU (dataplane.Enforcer.ProcessLogged), which judges it as if it had
// crossed the daemon: the second believed FIN revokes the flow (with the
// kernel's counts), a RST that fits ends it. A logged packet that is lost
// (a receive-buffer overrun, the daemon down) breaks nothing: the flow
// stays in the kernel until its entry times out, and the enforcer ends it
// then (expired), or decides its 4-tuple again at the next SYN.

// End-log group: each daemon binds a group of its own in its namespace,
// derived from its node name (the next free one if taken).
const (
	endLogGroupBase  = 0x7400
	endLogGroupRange = 0x0800
	endLogTries      = 32
	// The kernel flushes a batch below the rules' threshold after 10 ms
	// (hundredths of a second): a FIN is learned at most that late.
	endLogFlushTimeout = 1
	endLogRcvBuf       = 4 << 20
)

// endLog is the daemon's end-log reader and the PUs it serves, by the
// ifindex of their host veth (the device the message names).
type endLog struct {
	r *nflog.Reader

	mu    sync.RWMutex
	byDev map[uint32]*dataplane.PU

	// messages: logged FINs and RSTs read; unknown: of no PU of the node
	// (a PU just removed); malformed: messages or packets that could not
	// be parsed; errors: failed reads.
	messages, unknown, malformed, errors atomic.Uint64
}

// openEndLog binds the daemon's NFLOG group. nil if no group can be had:
// then FINs and RSTs are steered as before (nothing is lost but speed).
func openEndLog(node string) (*endLog, error) {
	h := fnv.New32a()
	h.Write([]byte(node))
	first := h.Sum32() % endLogGroupRange
	var err error
	for i := range uint32(endLogTries) {
		g := uint16(endLogGroupBase + (first+i)%endLogGroupRange)
		var r *nflog.Reader
		r, err = nflog.Open(nflog.Config{Group: g, Snaplen: steer.EndLogSnaplen, FlushTimeout: endLogFlushTimeout,
			QueueThreshold: steer.EndLogBatch, BufSize: 64 << 10, RcvBuf: endLogRcvBuf})
		if err == nil {
			return &endLog{r: r, byDev: map[uint32]*dataplane.PU{}}, nil
		}
		if !errors.Is(err, nflog.ErrBusy) {
			return nil, err
		}
	}
	return nil, err
}

// steerConfig is the steering's end-log setting.
func (l *endLog) steerConfig() steer.EndLog {
	if l == nil {
		return steer.EndLog{}
	}
	return steer.EndLog{Enabled: true, Group: l.r.Group()}
}

func (l *endLog) add(dev int, pu *dataplane.PU) {
	if l == nil || dev <= 0 {
		return
	}
	l.mu.Lock()
	l.byDev[uint32(dev)] = pu
	l.mu.Unlock()
}

func (l *endLog) remove(dev int, pu *dataplane.PU) {
	if l == nil || dev <= 0 {
		return
	}
	l.mu.Lock()
	if l.byDev[uint32(dev)] == pu {
		delete(l.byDev, uint32(dev))
	}
	l.mu.Unlock()
}

func (l *endLog) lookup(dev uint32) *dataplane.PU {
	l.mu.RLock()
	pu := l.byDev[dev]
	l.mu.RUnlock()
	return pu
}

// endLogLoop reads the logged FINs and RSTs until the daemon stops.
func (d *Daemon) endLogLoop() {
	defer d.wg.Done()
	l := d.endLog
	go func() {
		<-d.ctx.Done()
		l.r.Close()
	}()
	h := endLogHandler{d: d, l: l, batch: make([]byte, 1<<17), frame: make([]byte, nflog.MaxFrame), wbuf: make([]byte, tap.MaxFrame)}
	for {
		b, err := l.r.Read(h.batch)
		switch {
		case err == nil:
		case errors.Is(err, nflog.ErrOverrun):
			// Batches lost (counted by the reader): their flows end by
			// their timeout, or are decided again at their next SYN.
			continue
		case errors.Is(err, os.ErrClosed) || d.ctx.Err() != nil:
			return
		default:
			if l.errors.Add(1) == 1 {
				d.log.Warn("reading logged connection ends", "err", err)
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		h.batchOf(b, time.Now())
	}
}

// endLogHandler is endLogLoop's buffers: a batch is read, parsed, judged
// and its probes written without allocation.
type endLogHandler struct {
	d     *Daemon
	l     *endLog
	batch []byte
	frame []byte
	wbuf  []byte
	pkt   nflog.Packet
	out   dataplane.Output
}

func (h *endLogHandler) batchOf(b []byte, now time.Time) {
	m := nflog.NewMessages(b)
	for {
		ok, err := m.Next(&h.pkt)
		if err != nil {
			h.l.malformed.Add(1)
		}
		if !ok {
			return
		}
		h.packet(now)
	}
}

// packet hands one logged packet to its PU's enforcer: leaving the PU if
// it was logged entering the host veth (ingress), toward it if leaving
// the veth (egress).
func (h *endLogHandler) packet(now time.Time) {
	p := &h.pkt
	h.l.messages.Add(1)
	if p.Family != unix.NFPROTO_NETDEV {
		h.l.malformed.Add(1)
		return
	}
	var dev uint32
	var dir dataplane.Direction
	switch p.Hook {
	case nflog.HookIngress:
		dev, dir = p.InDev, dataplane.FromApp
	case nflog.HookEgress:
		dev, dir = p.OutDev, dataplane.FromNet
	default:
		h.l.malformed.Add(1)
		return
	}
	pu := h.l.lookup(dev)
	if pu == nil {
		h.l.unknown.Add(1)
		return
	}
	frame, err := p.Frame(h.frame)
	if err != nil {
		h.l.malformed.Add(1)
		return
	}
	h.d.enf.ProcessLogged(pu, dir, frame, now, &h.out)
	for i := range h.out.Inject {
		h.inject(&h.out.Inject[i])
	}
	h.d.queueNotes(h.out.Notes)
}

// inject writes a frame the enforcer asked for (a RST probe toward the PU).
func (h *endLogHandler) inject(in *dataplane.Injected) {
	pp := portsOf(in.PU)
	if pp == nil || vnet.HdrLen+len(in.Frame) > len(h.wbuf) {
		return
	}
	b := h.wbuf[:vnet.HdrLen+len(in.Frame)]
	copy(b[vnet.HdrLen:], in.Frame)
	_ = vnet.Hdr{}.Encode(b)
	if pp.port(in.To).Write(b) != nil {
		h.d.frames.stats.ioErrors.Add(1)
	}
}

// count reads one of the end log's counters (0 without an end log).
func (l *endLog) count(f func(*endLog) uint64) uint64 {
	if l == nil {
		return 0
	}
	return f(l)
}
