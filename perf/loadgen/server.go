package loadgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/vishvananda/netns"
)

// The first byte a client sends selects what the server does with the
// connection.
const (
	// modeRequest: answer one byte, then wait for the client to close
	// (the client closes first, so TIME_WAIT stays on the client side).
	modeRequest = 'c'
	// modeBulk: count bytes until EOF, then answer the count (8 bytes, big
	// endian, the mode byte excluded) and close.
	modeBulk = 'b'
	// modePing: echo every byte until EOF.
	modePing = 'p'
)

// Server is the measuring server, listening in one network namespace.
type Server struct {
	ln   net.Listener
	addr netip.AddrPort

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	done  bool
	wg    sync.WaitGroup

	accepted atomic.Uint64
	received atomic.Uint64 // bulk bytes received, mode bytes excluded
	// park, if set, takes ping connections after their first echo (they
	// stay open, idle and unanswered: see Parking).
	park atomic.Pointer[Parking]
}

// ParkPings makes the server park every ping connection in p once it has
// echoed its mode byte (the handshake of Client.Hold), instead of echoing
// on: the server then holds any number of idle connections without a
// file or goroutine each. Call it before the clients connect.
func (s *Server) ParkPings(p *Parking) { s.park.Store(p) }

// Listen starts a server on addr (port 0: any) inside ns.
func Listen(ns netns.NsHandle, addr netip.AddrPort) (*Server, error) {
	var ln net.Listener
	err := netsetup.InNetns(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("loadgen: listen %v: %w", addr, err)
	}
	s := &Server{ln: ln, conns: make(map[net.Conn]struct{})}
	s.addr = ln.Addr().(*net.TCPAddr).AddrPort()
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// Accepted is the number of connections accepted so far.
func (s *Server) Accepted() uint64 { return s.accepted.Load() }

// BulkReceived is the number of bulk bytes received so far.
func (s *Server) BulkReceived() uint64 { return s.received.Load() }

// Close stops the server, closes every open connection and waits for the
// handlers to return.
func (s *Server) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	s.done = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ECONNABORTED, EMFILE: keep serving
		}
		s.accepted.Add(1)
		s.mu.Lock()
		if s.done {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.handle(c)
	}
}

func (s *Server) handle(c net.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
		s.wg.Done()
	}()
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return
	}
	switch b[0] {
	case modeRequest:
		if _, err := c.Write(b[:]); err != nil {
			return
		}
		io.Copy(io.Discard, c) // until the client closes
	case modeBulk:
		buf := make([]byte, 256<<10)
		var n uint64
		for {
			m, err := c.Read(buf)
			n += uint64(m)
			s.received.Add(uint64(m))
			if err != nil {
				if err != io.EOF {
					return
				}
				break
			}
		}
		var out [8]byte
		binary.BigEndian.PutUint64(out[:], n)
		c.Write(out[:])
	case modePing:
		if p := s.park.Load(); p != nil {
			if _, err := c.Write(b[:]); err != nil {
				return
			}
			// On failure the socket closes: the client's check
			// (CheckParked) counts the connection as failed.
			if fd, err := dupFile(c.(*net.TCPConn)); err == nil {
				p.Add(fd)
			}
			return
		}
		for { // the mode byte is echoed too
			if _, err := c.Write(b[:]); err != nil {
				return
			}
			if _, err := io.ReadFull(c, b[:]); err != nil {
				return
			}
		}
	}
}
