package testenv

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// ServeEcho starts a TCP echo server in the PU on port (0: any) and returns
// its address. It stops with the test.
func (p *PU) ServeEcho(port int) netip.AddrPort {
	p.t.Helper()
	ln := p.Listen(port)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Minute))
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// Echo connects from the PU to an echo server, sends msg and checks the
// answer: the basic "can A talk to B" probe of the tests and the demo.
func (p *PU) Echo(addr netip.AddrPort, msg string, timeout time.Duration) error {
	return p.EchoFrom(0, addr, msg, timeout)
}

// EchoFrom is Echo from a given client port (0: the kernel chooses).
func (p *PU) EchoFrom(localPort int, addr netip.AddrPort, msg string, timeout time.Duration) error {
	c, err := p.DialFrom(localPort, addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	return EchoConn(c, msg, timeout)
}

// EchoConn sends msg on an open connection to an echo server and checks the
// answer (a round trip on an established connection).
func EchoConn(c net.Conn, msg string, timeout time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("write to %v: %w", c.RemoteAddr(), err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read from %v: %w", c.RemoteAddr(), err)
	}
	if string(got) != msg {
		return fmt.Errorf("echo from %v: got %q, want %q", c.RemoteAddr(), got, msg)
	}
	return nil
}
