package perf

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/perf/loadgen"
	"github.com/trireme-go/trireme/testenv"
)

// udpPolicy lets the perf client reach the perf server on every TCP port
// but only on UDP port DefaultPort.
var udpPolicy = fmt.Sprintf(`policies:
  - name: perf-server
    selector: app=perf-server
    ingress:
      - name: from-perf-client
        from:
          - selector: app=perf-client
        ports: [tcp, udp/%d]
        action: allow
  - name: perf-client
    selector: app=perf-client
    egress:
      - name: to-perf-server
        to:
          - selector: app=perf-server
        action: allow
`, DefaultPort)

// TestUDPFigures takes the UDP figures once, briefly, on the kernel path
// and through the enforcer daemon (PSK, the datagram handshake on every
// new flow): every figure is a positive number and no flow went
// unanswered. A UDP flow to a port the server's policy does not allow is
// answered on the kernel path (the check can tell) and refused through the
// enforcer: no request reaches the server.
func TestUDPFigures(t *testing.T) {
	noLeftovers(t)
	bin := testenv.Binary(t)
	ctx := context.Background()
	for _, v := range []Variant{Kernel{}, &Daemon{VariantName: "psk", Binary: bin, Secrets: PSKSecrets(), Policy: udpPolicy}} {
		t.Run(v.Name(), func(t *testing.T) {
			cfg := Config{Rounds: 1, Duration: 300 * time.Millisecond, Clients: 2}
			cfg.defaults()
			s, err := newSetup(ctx, cfg, v)
			if s != nil {
				t.Cleanup(func() {
					if err := s.close(); err != nil {
						t.Error(err)
					}
				})
			}
			if err != nil {
				t.Fatal(err)
			}
			out := map[FigureKey][]float64{}
			for _, fi := range figureInfos(&cfg) {
				out[fi.Key] = nanSlice(1)
			}
			requests := s.udp.Requests()
			for _, n := range measureUDP(ctx, cfg, s, 0, out, func(string) {}) {
				t.Errorf("note: %s", n)
			}
			for _, k := range []FigureKey{UDPFlows1, UDPFlowsN, UDPFirstP50, UDPFirstP99, UDPBulk1, UDPRTTP50} {
				if x := out[k][0]; math.IsNaN(x) || x <= 0 {
					t.Errorf("%s: %v", k, x)
				}
			}
			if p50, p99 := out[UDPFirstP50][0], out[UDPFirstP99][0]; p50 > p99 {
				t.Errorf("UDP first response p50 %v > p99 %v", p50, p99)
			}
			// Each flow of the rate runs is one request at the server.
			if s.udp.Requests() <= requests {
				t.Errorf("the server counted %d requests before the runs and %d after", requests, s.udp.Requests())
			}

			srvNs, err := netsetup.OpenNetnsPath(s.topo.Server.Netns)
			if err != nil {
				t.Fatal(err)
			}
			defer srvNs.Close()
			other, err := loadgen.ListenUDP(srvNs, netip.AddrPortFrom(s.topo.Server.Addr, cfg.Port+2))
			if err != nil {
				t.Fatal(err)
			}
			defer other.Close()
			cli, err := s.client.To(other.Addr())
			if err != nil {
				t.Fatal(err)
			}
			// A denied flow costs the timeout: a second, long enough for a
			// loaded machine's kernel path to answer every flow.
			cli.Timeout = time.Second
			fr, err := cli.UDPFlowRate(ctx, 1, 1500*time.Millisecond, false)
			if err != nil {
				t.Fatal(err)
			}
			if _, kernel := v.(Kernel); kernel {
				if fr.Conns == 0 || fr.Failed != 0 {
					t.Fatalf("kernel path to udp/%d: %d flows answered, %d not (first: %v)", other.Addr().Port(), fr.Conns, fr.Failed, fr.FirstErr)
				}
				return
			}
			if fr.Conns != 0 || fr.Failed == 0 || other.Requests() != 0 {
				t.Fatalf("denied udp/%d: %d flows answered, %d not; the server got %d requests", other.Addr().Port(), fr.Conns, fr.Failed, other.Requests())
			}
		})
	}
}
