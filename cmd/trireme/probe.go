package main

// `trireme probe`: the small test server and client used by the demo, the
// Docker tests and perf. The client's exit code tells apart the outcomes
// enforcement produces: an answer (0), a connection refused by a RST (1), a
// connection reset after it was established (2), no answer at all (3).

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/trireme-go/trireme/node"
)

// Probe outcomes and their exit codes.
const (
	probeOK = iota
	probeRefused
	probeReset
	probeTimeout
	probeError
)

var probeOutcome = [...]string{"ok", "refused", "reset", "timeout", "error"}

func init() { rootCmd.AddCommand(probeCmd()) }

func probeCmd() *cobra.Command {
	var socket string
	var timeout time.Duration
	var asJSON bool
	probe := &cobra.Command{
		Use:   "probe FROM TO:PORT",
		Short: "Diagnose a connection from a PU (and the built-in test server and client)",
		Long: `trireme probe FROM TO:PORT connects from the namespace of the PU FROM (a name
or ID) to TO:PORT (an address or a PU's name) over TCP, and explains the
outcome from the flow records of the daemon: the verdict, which side
decided, the rule, the peer's identity as verified, and what the
enforcement of the handshake added. Exit code 0 when it connected, 1 if not.

probe serve and probe connect are the small test server and client of the
demo, the tests and perf.`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return probeDiagRun(cmd, args, socket, timeout, asJSON)
		},
	}
	probe.Flags().StringVar(&socket, "socket", node.DefaultSocket, "daemon control socket")
	probe.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "how long the connection may take")
	probe.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	probe.AddCommand(probeServeCmd(), probeConnectCmd())
	return probe
}

func probeServeCmd() *cobra.Command {
	var tcpPorts, udpPorts, name, addr string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Answer TCP connections and UDP datagrams with this server's name",
		Long: `Listens on the given ports. Each TCP connection gets one line, the server's
name, after the client sent a byte (or a line); each UDP datagram is answered
with the name. Prints "ready" once every port is bound; stops on SIGTERM/SIGINT.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tcp, err := parsePorts(tcpPorts)
			if err != nil {
				return &exitError{code: 2, err: fmt.Errorf("--tcp: %w", err)}
			}
			udp, err := parsePorts(udpPorts)
			if err != nil {
				return &exitError{code: 2, err: fmt.Errorf("--udp: %w", err)}
			}
			if len(tcp)+len(udp) == 0 {
				return &exitError{code: 2, err: errors.New("give --tcp and/or --udp ports")}
			}
			if name == "" {
				name, _ = os.Hostname()
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return probeServe(ctx, cmd.OutOrStdout(), addr, name, tcp, udp)
		},
	}
	cmd.Flags().StringVar(&tcpPorts, "tcp", "", "TCP ports, comma-separated")
	cmd.Flags().StringVar(&udpPorts, "udp", "", "UDP ports, comma-separated")
	cmd.Flags().StringVar(&name, "name", "", "name to answer with (default: host name)")
	cmd.Flags().StringVar(&addr, "addr", "", "address to listen on (default: all)")
	return cmd
}

func parsePorts(s string) ([]int, error) {
	var ports []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := strconv.Atoi(f)
		if err != nil || p < 0 || p > 65535 {
			return nil, fmt.Errorf("bad port %q", f)
		}
		ports = append(ports, p)
	}
	return ports, nil
}

// probeServe serves until ctx is done.
func probeServe(ctx context.Context, out io.Writer, addr, name string, tcp, udp []int) error {
	reply := []byte(name + "\n")
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	var wg sync.WaitGroup
	for _, p := range tcp {
		l, err := net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(p)))
		if err != nil {
			return err
		}
		closers = append(closers, l)
		wg.Add(1)
		go func() { defer wg.Done(); serveTCP(l, reply) }()
	}
	for _, p := range udp {
		c, err := net.ListenPacket("udp", net.JoinHostPort(addr, strconv.Itoa(p)))
		if err != nil {
			return err
		}
		closers = append(closers, c)
		wg.Add(1)
		go func() { defer wg.Done(); serveUDP(c, reply) }()
	}
	fmt.Fprintln(out, "ready")
	<-ctx.Done()
	for _, c := range closers {
		c.Close()
	}
	closers = nil
	wg.Wait()
	return nil
}

func serveTCP(l net.Listener, reply []byte) {
	for {
		c, err := l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return // listener closed
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			// One byte is enough: clients send a line, but a byte proves
			// the data path works in both directions.
			var b [1]byte
			if _, err := c.Read(b[:]); err != nil {
				return
			}
			c.Write(reply)
		}()
	}
}

func serveUDP(c net.PacketConn, reply []byte) {
	buf := make([]byte, 2048)
	for {
		_, from, err := c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		c.WriteTo(reply, from)
	}
}

func probeConnectCmd() *cobra.Command {
	var tcpAddr, udpAddr string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "connect",
		Short: "Connect to a probe server and print ok/refused/reset/timeout",
		Long: `Connects (TCP) or sends a datagram (UDP), waits for the server's name and
prints one line: "ok NAME", "refused", "reset", "timeout" or "error: ...".
Exit code: 0 ok, 1 refused (RST to the SYN, or ICMP port unreachable for UDP),
2 reset (RST after the connection was established), 3 timeout, 4 other errors.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (tcpAddr == "") == (udpAddr == "") {
				return &exitError{code: probeError, err: errors.New("give exactly one of --tcp HOST:PORT and --udp HOST:PORT")}
			}
			network, target := "tcp", tcpAddr
			if udpAddr != "" {
				network, target = "udp", udpAddr
			}
			outcome, reply, err := probeConnect(network, target, timeout)
			switch {
			case outcome == probeOK:
				fmt.Fprintln(cmd.OutOrStdout(), "ok", reply)
				return nil
			case outcome == probeError:
				fmt.Fprintln(cmd.OutOrStdout(), "error:", err)
			default:
				fmt.Fprintln(cmd.OutOrStdout(), probeOutcome[outcome])
			}
			return &exitError{code: outcome}
		},
	}
	cmd.Flags().StringVar(&tcpAddr, "tcp", "", "TCP server HOST:PORT")
	cmd.Flags().StringVar(&udpAddr, "udp", "", "UDP server HOST:PORT")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Second, "give up after this long")
	return cmd
}

// probeConnect runs one exchange and classifies its outcome.
func probeConnect(network, target string, timeout time.Duration) (int, string, error) {
	deadline := time.Now().Add(timeout)
	c, err := net.DialTimeout(network, target, timeout)
	if err != nil {
		return classify(err), "", err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	if _, err := c.Write([]byte("hello\n")); err != nil {
		return classify(err), "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		if errors.Is(err, io.EOF) {
			return probeError, "", errors.New("connection closed without an answer")
		}
		return classify(err), "", err
	}
	return probeOK, strings.TrimSpace(line), nil
}

func classify(err error) int {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return probeRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return probeReset
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return probeTimeout
	}
	return probeError
}
