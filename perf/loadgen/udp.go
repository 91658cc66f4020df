package loadgen

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The first byte of a datagram to the UDP server selects its answer.
const (
	// udpRequest and udpPing: the byte is sent back.
	udpRequest = 'c'
	udpPing    = 'p'
	// udpBulk: counted (the whole datagram), not answered.
	udpBulk = 'b'
	// udpCount: answered with the bulk bytes received so far (8 bytes, big
	// endian).
	udpCount = 'n'
)

// UDPDatagram is the size of the bulk datagrams' payload: a 1500-byte MTU
// less the IPv6 and UDP headers, so that no datagram is fragmented.
const UDPDatagram = 1500 - 40 - 8

// UDPServer answers datagrams in one network namespace.
type UDPServer struct {
	conn     *net.UDPConn
	addr     netip.AddrPort
	done     chan struct{}
	requests atomic.Uint64 // request and ping datagrams received
	received atomic.Uint64 // bulk bytes received
}

// ListenUDP starts a UDP server on addr (port 0: any) inside ns.
func ListenUDP(ns netns.NsHandle, addr netip.AddrPort) (*UDPServer, error) {
	var conn *net.UDPConn
	err := netsetup.InNetns(ns, func() error {
		var err error
		conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("loadgen: listen udp %v: %w", addr, err)
	}
	// Room for a burst of bulk datagrams (best effort: capped by rmem_max).
	conn.SetReadBuffer(8 << 20)
	s := &UDPServer{conn: conn, addr: conn.LocalAddr().(*net.UDPAddr).AddrPort(), done: make(chan struct{})}
	go s.serve()
	return s, nil
}

// Addr is the address the server listens on.
func (s *UDPServer) Addr() netip.AddrPort { return s.addr }

// Requests is the number of request and ping datagrams received so far.
func (s *UDPServer) Requests() uint64 { return s.requests.Load() }

// Close stops the server and waits for it to stop reading.
func (s *UDPServer) Close() error {
	err := s.conn.Close()
	<-s.done
	return err
}

func (s *UDPServer) serve() {
	defer close(s.done)
	buf := make([]byte, 64<<10)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if n == 0 {
			continue
		}
		switch buf[0] {
		case udpRequest, udpPing:
			s.requests.Add(1)
			s.conn.WriteToUDPAddrPort(buf[:1], from)
		case udpBulk:
			s.received.Add(uint64(n))
		case udpCount:
			var out [8]byte
			binary.BigEndian.PutUint64(out[:], s.received.Load())
			s.conn.WriteToUDPAddrPort(out[:], from)
		}
	}
}

// udpFlowSocket binds a fresh UDP socket to the next client port, in turn
// over 1024-65535 (ports in use are skipped): each flow is a new 5-tuple,
// and one recurs only after 64,512 flows of this client.
func (c *Client) udpFlowSocket(fd int) error {
	for range 64 {
		port := 1024 + int(c.udpPorts.Add(1)%(65536-1024))
		var sa unix.Sockaddr
		if c.family == unix.AF_INET {
			sa = &unix.SockaddrInet4{Port: port}
		} else {
			sa = &unix.SockaddrInet6{Port: port}
		}
		err := unix.Bind(fd, sa)
		if err == nil {
			return nil
		}
		if err != unix.EADDRINUSE {
			return fmt.Errorf("loadgen: bind udp port %d: %w", port, err)
		}
	}
	return errors.New("loadgen: no free udp client port")
}

// dial connects the UDP socket fd (which it owns from then on) to the
// server; no packet is sent.
func (c *Client) dialUDP(fd int) (*os.File, error) {
	sa := c.sa
	switch a := c.sa.(type) {
	case *unix.SockaddrInet4:
		cp := *a
		sa = &cp
	case *unix.SockaddrInet6:
		cp := *a
		sa = &cp
	}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("loadgen: connect udp: %w", err)
	}
	return os.NewFile(uintptr(fd), "udp"), nil
}

// udpExchange sends one datagram of mode and reads the answer into ans,
// within timeout.
func udpExchange(f *os.File, mode byte, ans []byte, timeout time.Duration) (int, error) {
	f.SetDeadline(time.Now().Add(timeout))
	if _, err := f.Write([]byte{mode}); err != nil {
		return 0, fmt.Errorf("loadgen: udp request: %w", err)
	}
	n, err := f.Read(ans)
	if err != nil {
		return 0, fmt.Errorf("loadgen: udp response: %w", err)
	}
	return n, nil
}

// UDPFlowRate runs clients closed-loop workers for d, each making one UDP
// flow after another: a new socket on a new client port, a 1-byte request
// datagram, the 1-byte response, close. A flow without a response within
// the client's Timeout is failed (UDP has no refusal: a denied flow is
// silence). With latencies, FirstByte has each flow's time from sending
// the request until the response arrived (Connect stays empty).
func (c *Client) UDPFlowRate(ctx context.Context, clients int, d time.Duration, latencies bool) (ConnRate, error) {
	if clients < 1 {
		return ConnRate{}, fmt.Errorf("loadgen: %d clients", clients)
	}
	fac, err := c.startFactoryOf(64+8*clients, unix.SOCK_DGRAM, c.udpFlowSocket)
	if err != nil {
		return ConnRate{}, err
	}
	defer fac.close()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()

	type worker struct {
		flows, failed uint64
		first         []time.Duration
		firstErr      error
		fatal         error
	}
	ws := make([]worker, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range ws {
		w := &ws[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ans [16]byte
			for ctx.Err() == nil {
				fd, err := fac.get()
				if err != nil {
					w.fatal = err
					return
				}
				f, err := c.dialUDP(fd)
				if err != nil {
					w.fatal = err
					return
				}
				t0 := time.Now()
				_, err = udpExchange(f, udpRequest, ans[:], c.Timeout)
				if errors.Is(err, os.ErrDeadlineExceeded) {
					// UDP loses datagrams (a full socket buffer on a
					// loaded machine, also on the kernel path): ask
					// again once, as a real request/response client
					// does, before counting the flow as failed.
					_, err = udpExchange(f, udpRequest, ans[:], c.Timeout)
				}
				took := time.Since(t0)
				f.Close()
				if err != nil {
					w.failed++
					if w.firstErr == nil {
						w.firstErr = err
					}
					continue
				}
				w.flows++
				if latencies && len(w.first) < maxSamples {
					w.first = append(w.first, took)
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
		r.Conns += w.flows
		r.Failed += w.failed
		r.FirstByte = append(r.FirstByte, w.first...)
		if r.FirstErr == nil {
			r.FirstErr = w.firstErr
		}
	}
	return r, nil
}

// udpFlow opens one UDP flow (a fresh client port) and makes its first
// exchange, which the handshake of an enforcer may delay.
func (c *Client) udpFlow(mode byte) (*os.File, error) {
	fac, err := c.startFactoryOf(1, unix.SOCK_DGRAM, c.udpFlowSocket)
	if err != nil {
		return nil, err
	}
	fd, err := fac.get()
	fac.close()
	if err != nil {
		return nil, err
	}
	f, err := c.dialUDP(fd)
	if err != nil {
		return nil, err
	}
	var ans [16]byte
	if _, err := udpExchange(f, mode, ans[:], c.Timeout); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// UDPRTT sends one byte back and forth on one established UDP flow for d.
// A lost datagram ends the run with an error.
func (c *Client) UDPRTT(ctx context.Context, d time.Duration) (RTT, error) {
	f, err := c.udpFlow(udpPing)
	if err != nil {
		return RTT{}, err
	}
	defer f.Close()
	var r RTT
	var ans [16]byte
	until := time.Now().Add(d)
	for ctx.Err() == nil && len(r.Samples) < maxSamples {
		t0 := time.Now()
		if !t0.Before(until) {
			break
		}
		if _, err := udpExchange(f, udpPing, ans[:], c.Timeout); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && len(r.Samples) > 0 {
				// A lost ping (UDP): the samples so far stand; a
				// late answer must not be taken for the next one's.
				return r, nil
			}
			return r, err
		}
		r.Samples = append(r.Samples, time.Since(t0))
	}
	return r, nil
}

// UDPBulk sends UDPDatagram-byte datagrams as fast as it can on one
// established UDP flow for d. Received is what the server counted (asked
// before and after, on the same flow); Elapsed is the sending time. Only
// one UDPBulk may run against a server at a time.
func (c *Client) UDPBulk(ctx context.Context, d time.Duration) (Bulk, error) {
	f, err := c.udpFlow(udpCount)
	if err != nil {
		return Bulk{}, err
	}
	defer f.Close()
	before, err := c.udpCount(f)
	if err != nil {
		return Bulk{}, err
	}
	buf := make([]byte, UDPDatagram)
	buf[0] = udpBulk
	out := Bulk{Streams: 1}
	start := time.Now()
	until := start.Add(d)
	for time.Now().Before(until) && ctx.Err() == nil {
		f.SetDeadline(time.Now().Add(c.Timeout))
		n, err := f.Write(buf)
		if err != nil {
			// ECONNREFUSED: an ICMP unreachable came back; the path
			// dropped or refused the flow.
			return out, fmt.Errorf("loadgen: udp bulk write: %w", err)
		}
		out.Sent += uint64(n)
	}
	out.Elapsed = time.Since(start)
	after, err := c.udpCount(f)
	if err != nil {
		return out, err
	}
	out.Received = after - before
	return out, nil
}

// udpCount asks the server for its bulk count; the question or the answer
// may be lost behind a burst, so it asks up to 5 times.
func (c *Client) udpCount(f *os.File) (uint64, error) {
	var ans [16]byte
	var err error
	for range 5 {
		var n int
		n, err = udpExchange(f, udpCount, ans[:], min(c.Timeout, 500*time.Millisecond))
		if err == nil && n == 8 {
			return binary.BigEndian.Uint64(ans[:8]), nil
		}
		if err == nil {
			err = fmt.Errorf("loadgen: udp count of %d bytes", n)
		}
	}
	return 0, err
}

// UDPProbe makes one UDP request/response flow, retrying until one
// succeeds or timeout passes.
func (c *Client) UDPProbe(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		f, err := c.udpFlow(udpRequest)
		if err == nil {
			f.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("loadgen: no UDP flow to %v within %v: %w", c.server, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
