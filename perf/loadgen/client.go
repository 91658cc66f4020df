package loadgen

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// DefaultTimeout bounds every connect, read and write of the client: a
// connection the path under test drops costs this much, and is counted as
// failed, instead of stalling a run.
const DefaultTimeout = 5 * time.Second

// maxSamples caps the latency samples kept per worker (memory bound).
const maxSamples = 1 << 21

// Client generates load from one network namespace toward a Server.
type Client struct {
	ns      netns.NsHandle
	server  netip.AddrPort
	sa      unix.Sockaddr
	family  int
	Timeout time.Duration
	// udpPorts counts the client ports given to UDP flows (udp.go).
	udpPorts atomic.Uint32
}

// NewClient returns a client whose sockets live in ns. ns must stay open
// while the client is used.
func NewClient(ns netns.NsHandle, server netip.AddrPort) (*Client, error) {
	c := &Client{ns: ns, server: server, Timeout: DefaultTimeout}
	a := server.Addr().Unmap()
	switch {
	case a.Is4():
		c.sa = &unix.SockaddrInet4{Port: int(server.Port()), Addr: a.As4()}
		c.family = unix.AF_INET
	case a.Is6():
		c.sa = &unix.SockaddrInet6{Port: int(server.Port()), Addr: a.As16()}
		c.family = unix.AF_INET6
	default:
		return nil, fmt.Errorf("loadgen: invalid server address %v", server)
	}
	return c, nil
}

// socketFactory creates client sockets in the client namespace on one
// locked thread, ahead of use, so that the workers never switch namespace.
type socketFactory struct {
	fds  chan int
	stop chan struct{}
	err  atomic.Value // error that ended the factory
}

var errFactoryStopped = errors.New("loadgen: socket factory stopped")

func (c *Client) startFactory(buffer int) (*socketFactory, error) {
	return c.startFactoryOf(buffer, unix.SOCK_STREAM, nil)
}

// startFactoryOf makes sockets of type sotype; prepare, if set, readies
// each one (a bind) and may reject it (it closes the socket then).
func (c *Client) startFactoryOf(buffer, sotype int, prepare func(fd int) error) (*socketFactory, error) {
	f := &socketFactory{fds: make(chan int, buffer), stop: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		defer close(f.fds)
		leave, err := netsetup.EnterNetns(c.ns)
		if err != nil {
			ready <- err
			return
		}
		defer leave()
		ready <- nil
		for {
			fd, err := unix.Socket(c.family, sotype|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				f.err.Store(fmt.Errorf("loadgen: socket: %w", err))
				return
			}
			if sotype == unix.SOCK_STREAM {
				// As Go's net package does for every TCP socket.
				unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
			}
			if prepare != nil {
				if err := prepare(fd); err != nil {
					unix.Close(fd)
					f.err.Store(err)
					return
				}
			}
			select {
			case f.fds <- fd:
			case <-f.stop:
				unix.Close(fd)
				return
			}
		}
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	return f, nil
}

func (f *socketFactory) get() (int, error) {
	fd, ok := <-f.fds
	if !ok {
		if err, _ := f.err.Load().(error); err != nil {
			return -1, err
		}
		return -1, errFactoryStopped
	}
	return fd, nil
}

func (f *socketFactory) close() {
	close(f.stop)
	for fd := range f.fds {
		unix.Close(fd)
	}
}

// connect connects fd (which it owns from then on) to the server and returns
// the connection as a pollable file with the time connect took.
func (c *Client) connect(fd int, timeout time.Duration) (*os.File, time.Duration, error) {
	// unix.Connect writes the address into the Sockaddr's own buffer:
	// each connect gets a copy, connects run on many goroutines.
	sa := c.sa
	switch a := c.sa.(type) {
	case *unix.SockaddrInet4:
		cp := *a
		sa = &cp
	case *unix.SockaddrInet6:
		cp := *a
		sa = &cp
	}
	start := time.Now()
	err := unix.Connect(fd, sa)
	switch err {
	case nil, unix.EINPROGRESS, unix.EINTR, unix.EALREADY:
	default:
		unix.Close(fd)
		return nil, 0, fmt.Errorf("loadgen: connect: %w", err)
	}
	f := os.NewFile(uintptr(fd), "tcp") // non-blocking fd: registered with the poller
	f.SetDeadline(start.Add(timeout))
	if err != nil {
		rc, rerr := f.SyscallConn()
		if rerr != nil {
			f.Close()
			return nil, 0, rerr
		}
		var cerr error
		// RawConn.Write clears a readiness that arrived before it was
		// called, so each call first asks the socket whether the
		// handshake is over, and only then waits.
		werr := rc.Write(func(s uintptr) bool {
			soerr, err := unix.GetsockoptInt(int(s), unix.SOL_SOCKET, unix.SO_ERROR)
			if err != nil {
				cerr = err
				return true
			}
			if soerr != 0 {
				cerr = unix.Errno(soerr)
				return true
			}
			if _, err := unix.Getpeername(int(s)); err == unix.ENOTCONN {
				return false
			} else if err != nil {
				cerr = err
			}
			return true
		})
		if werr == nil {
			werr = cerr
		}
		if werr != nil {
			f.Close()
			return nil, 0, fmt.Errorf("loadgen: connect: %w", werr)
		}
	}
	return f, time.Since(start), nil
}

// ConnRate is the result of a closed-loop new-connection run.
type ConnRate struct {
	Clients int
	Conns   uint64        // completed exchanges
	Failed  uint64        // connections that failed (refused, timed out, reset)
	Elapsed time.Duration // from start until the last worker stopped
	// Per-connection latencies (only when asked for): until connect
	// returned, and until the first response byte was read, both from the
	// connect call.
	Connect   []time.Duration
	FirstByte []time.Duration
	FirstErr  error
}

// PerSecond is the rate of completed connections.
func (r ConnRate) PerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Conns) / r.Elapsed.Seconds()
}

// Exchange makes one connection: connect, 1-byte request, 1-byte response,
// close. It returns the connect and first-byte times.
func (c *Client) exchange(fd int, timeout time.Duration) (tConnect, tFirst time.Duration, err error) {
	f, tConnect, err := c.connect(fd, timeout)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	start := time.Now().Add(-tConnect)
	b := [1]byte{modeRequest}
	if _, err := f.Write(b[:]); err != nil {
		return 0, 0, fmt.Errorf("loadgen: request: %w", err)
	}
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return 0, 0, fmt.Errorf("loadgen: response: %w", err)
	}
	return tConnect, time.Since(start), nil
}

// ConnRate runs clients closed-loop workers for d, each making one
// connection after another. latencies asks for per-connection samples.
func (c *Client) ConnRate(ctx context.Context, clients int, d time.Duration, latencies bool) (ConnRate, error) {
	if clients < 1 {
		return ConnRate{}, fmt.Errorf("loadgen: %d clients", clients)
	}
	fac, err := c.startFactory(64 + 8*clients)
	if err != nil {
		return ConnRate{}, err
	}
	defer fac.close()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()

	type worker struct {
		conns, failed     uint64
		connect, firstOut []time.Duration
		firstErr          error
		fatal             error
	}
	ws := make([]worker, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range ws {
		w := &ws[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				fd, err := fac.get()
				if err != nil {
					w.fatal = err
					return
				}
				tc, tf, err := c.exchange(fd, c.Timeout)
				if err != nil {
					w.failed++
					if w.firstErr == nil {
						w.firstErr = err
					}
					continue
				}
				w.conns++
				if latencies && len(w.connect) < maxSamples {
					w.connect = append(w.connect, tc)
					w.firstOut = append(w.firstOut, tf)
				}
			}
		}()
	}
	wg.Wait()
	r := ConnRate{Clients: clients, Elapsed: time.Since(start)}
	for i := range ws {
		w := &ws[i]
		if w.fatal != nil {
			return r, w.fatal
		}
		r.Conns += w.conns
		r.Failed += w.failed
		r.Connect = append(r.Connect, w.connect...)
		r.FirstByte = append(r.FirstByte, w.firstOut...)
		if r.FirstErr == nil {
			r.FirstErr = w.firstErr
		}
	}
	return r, nil
}

// Bulk is the result of a bulk-transfer run.
type Bulk struct {
	Streams  int
	Sent     uint64        // bytes the client wrote
	Received uint64        // bytes the server reports it received
	Elapsed  time.Duration // until the server had received the last byte of every stream
}

// Gbps is the throughput in Gbit/s, from the bytes the server received.
func (r Bulk) Gbps() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Received) * 8 / r.Elapsed.Seconds() / 1e9
}

const bulkChunk = 128 << 10

// Bulk sends as fast as it can on streams connections for d. Each stream
// ends with a half-close and waits for the server's count of what it
// received.
func (c *Client) Bulk(ctx context.Context, streams int, d time.Duration) (Bulk, error) {
	if streams < 1 {
		return Bulk{}, fmt.Errorf("loadgen: %d streams", streams)
	}
	fac, err := c.startFactory(streams)
	if err != nil {
		return Bulk{}, err
	}
	files := make([]*os.File, 0, streams)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for range streams {
		fd, err := fac.get()
		if err != nil {
			fac.close()
			return Bulk{}, err
		}
		f, _, err := c.connect(fd, c.Timeout)
		if err != nil {
			fac.close()
			return Bulk{}, err
		}
		files = append(files, f)
	}
	fac.close()

	type result struct {
		sent, received uint64
		end            time.Time
		err            error
	}
	res := make([]result, streams)
	var wg sync.WaitGroup
	start := time.Now()
	until := start.Add(d)
	for i, f := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &res[i]
			r.err = c.bulkStream(ctx, f, until, &r.sent, &r.received)
			r.end = time.Now()
		}()
	}
	wg.Wait()
	out := Bulk{Streams: streams}
	for _, r := range res {
		if r.err != nil {
			return out, r.err
		}
		out.Sent += r.sent
		out.Received += r.received
		if e := r.end.Sub(start); e > out.Elapsed {
			out.Elapsed = e
		}
	}
	return out, nil
}

func (c *Client) bulkStream(ctx context.Context, f *os.File, until time.Time, sent, received *uint64) error {
	f.SetDeadline(time.Now().Add(c.Timeout))
	if _, err := f.Write([]byte{modeBulk}); err != nil { // not payload: not counted
		return fmt.Errorf("loadgen: bulk write: %w", err)
	}
	buf := make([]byte, bulkChunk)
	for time.Now().Before(until) && ctx.Err() == nil {
		f.SetDeadline(time.Now().Add(c.Timeout))
		n, err := f.Write(buf)
		*sent += uint64(n)
		if err != nil {
			return fmt.Errorf("loadgen: bulk write: %w", err)
		}
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(s uintptr) { serr = unix.Shutdown(int(s), unix.SHUT_WR) }); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("loadgen: bulk shutdown: %w", serr)
	}
	f.SetDeadline(time.Now().Add(c.Timeout))
	var count [8]byte
	if _, err := io.ReadFull(f, count[:]); err != nil {
		return fmt.Errorf("loadgen: bulk count: %w", err)
	}
	*received = binary.BigEndian.Uint64(count[:])
	return nil
}

// RTT is the result of a ping-pong run on one established connection.
type RTT struct {
	Samples []time.Duration // one per 1-byte exchange
}

// RTT exchanges one byte back and forth on one connection for d.
func (c *Client) RTT(ctx context.Context, d time.Duration) (RTT, error) {
	fac, err := c.startFactory(1)
	if err != nil {
		return RTT{}, err
	}
	fd, err := fac.get()
	fac.close()
	if err != nil {
		return RTT{}, err
	}
	f, _, err := c.connect(fd, c.Timeout)
	if err != nil {
		return RTT{}, err
	}
	defer f.Close()
	f.SetDeadline(time.Now().Add(c.Timeout))
	b := [1]byte{modePing}
	if _, err := f.Write(b[:]); err != nil {
		return RTT{}, fmt.Errorf("loadgen: ping: %w", err)
	}
	if _, err := io.ReadFull(f, b[:]); err != nil { // the echo of the mode byte: warms up the path
		return RTT{}, fmt.Errorf("loadgen: pong: %w", err)
	}
	var r RTT
	until := time.Now().Add(d)
	for ctx.Err() == nil && len(r.Samples) < maxSamples {
		t0 := time.Now()
		if !t0.Before(until) {
			break
		}
		f.SetDeadline(t0.Add(c.Timeout))
		if _, err := f.Write(b[:]); err != nil {
			return r, fmt.Errorf("loadgen: ping: %w", err)
		}
		if _, err := io.ReadFull(f, b[:]); err != nil {
			return r, fmt.Errorf("loadgen: pong: %w", err)
		}
		r.Samples = append(r.Samples, time.Since(t0))
	}
	return r, nil
}

// Probe makes one connection exchange, retrying until one succeeds or
// timeout passes: it tells when a freshly built path carries traffic.
func (c *Client) Probe(ctx context.Context, timeout time.Duration) error {
	fac, err := c.startFactory(1)
	if err != nil {
		return err
	}
	defer fac.close()
	deadline := time.Now().Add(timeout)
	for {
		fd, err := fac.get()
		if err != nil {
			return err
		}
		_, _, err = c.exchange(fd, min(c.Timeout, time.Second))
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("loadgen: no connection to %v within %v: %w", c.server, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// To returns a client in the same namespace aimed at another server.
func (c *Client) To(server netip.AddrPort) (*Client, error) {
	n, err := NewClient(c.ns, server)
	if err != nil {
		return nil, err
	}
	n.Timeout = c.Timeout
	return n, nil
}
