package node

import (
	"net/netip"
	"strings"
	"sync"
	"testing"
)

func TestAddrAllocator(t *testing.T) {
	type step struct {
		op   string // allocate, reserve, release
		addr string // reserve, release: the address; allocate: the one expected ("full" for none)
	}
	tests := []struct {
		name    string
		subnet  string
		gateway string
		steps   []step
	}{
		{
			name: "the lowest free address after the gateway, in order", subnet: "10.77.0.0/16", gateway: "10.77.0.1",
			steps: []step{{"allocate", "10.77.0.2/16"}, {"allocate", "10.77.0.3/16"}, {"allocate", "10.77.0.4/16"}},
		},
		{
			name: "the subnet is masked", subnet: "10.77.3.9/24", gateway: "10.77.3.1",
			steps: []step{{"allocate", "10.77.3.2/24"}},
		},
		{
			name: "a released address is handed out again first", subnet: "10.0.0.0/24", gateway: "10.0.0.1",
			steps: []step{{"allocate", "10.0.0.2/24"}, {"allocate", "10.0.0.3/24"}, {"allocate", "10.0.0.4/24"},
				{"release", "10.0.0.3"}, {"allocate", "10.0.0.3/24"}, {"allocate", "10.0.0.5/24"}},
		},
		{
			name: "reserved addresses are skipped", subnet: "10.0.0.0/24", gateway: "10.0.0.1",
			steps: []step{{"reserve", "10.0.0.2"}, {"reserve", "10.0.0.4"}, {"allocate", "10.0.0.3/24"}, {"allocate", "10.0.0.5/24"}},
		},
		{
			// A /30 has two host addresses: the gateway and one PU.
			name: "never the broadcast address: a /30 holds one PU", subnet: "192.168.5.0/30", gateway: "192.168.5.1",
			steps: []step{{"allocate", "192.168.5.2/30"}, {"allocate", "full"}, {"release", "192.168.5.2"}, {"allocate", "192.168.5.2/30"}},
		},
		{
			name: "a full /29, then room again", subnet: "10.1.1.8/29", gateway: "10.1.1.9",
			steps: []step{{"allocate", "10.1.1.10/29"}, {"allocate", "10.1.1.11/29"}, {"allocate", "10.1.1.12/29"},
				{"allocate", "10.1.1.13/29"}, {"allocate", "10.1.1.14/29"}, {"allocate", "full"},
				{"release", "10.1.1.12"}, {"allocate", "10.1.1.12/29"}, {"allocate", "full"}},
		},
		{
			name: "releasing an address never handed out changes nothing", subnet: "10.0.0.0/29", gateway: "10.0.0.1",
			steps: []step{{"release", "10.0.0.5"}, {"release", "192.0.2.1"}, {"allocate", "10.0.0.2/29"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAddrAllocator(netip.MustParsePrefix(tt.subnet))
			if got := a.gateway().String(); got != tt.gateway {
				t.Fatalf("gateway = %s, want %s", got, tt.gateway)
			}
			if got, want := a.gatewayPrefix(), netip.PrefixFrom(netip.MustParseAddr(tt.gateway), a.subnet.Bits()); got != want {
				t.Fatalf("gatewayPrefix = %s, want %s", got, want)
			}
			for i, s := range tt.steps {
				switch s.op {
				case "allocate":
					got, err := a.allocate()
					if s.addr == "full" {
						if err == nil || !strings.Contains(err.Error(), "is full") {
							t.Fatalf("step %d: allocate = %v, %v; want a full-subnet error", i, got, err)
						}
						continue
					}
					if err != nil || got.String() != s.addr {
						t.Fatalf("step %d: allocate = %v, %v; want %s", i, got, err, s.addr)
					}
				case "reserve":
					a.reserve(netip.MustParseAddr(s.addr))
				case "release":
					a.release(netip.MustParseAddr(s.addr))
				}
			}
		})
	}
}

func TestAddrAllocatorContains(t *testing.T) {
	a := newAddrAllocator(netip.MustParsePrefix("10.77.0.0/16"))
	for addr, want := range map[string]bool{"10.77.0.1": true, "10.77.255.255": true, "10.78.0.1": false, "fd00::1": false} {
		if got := a.contains(netip.MustParseAddr(addr)); got != want {
			t.Errorf("contains(%s) = %v, want %v", addr, got, want)
		}
	}
}

// Concurrent creates never get the same address (run with -race).
func TestAddrAllocatorConcurrent(t *testing.T) {
	a := newAddrAllocator(netip.MustParsePrefix("10.0.0.0/22"))
	const workers, each = 8, 100
	got := make([][]netip.Prefix, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for range each {
				p, err := a.allocate()
				if err != nil {
					t.Error(err)
					return
				}
				got[w] = append(got[w], p)
			}
		})
	}
	wg.Wait()
	seen := map[netip.Prefix]bool{}
	for _, ps := range got {
		for _, p := range ps {
			if seen[p] {
				t.Fatalf("%s handed out twice", p)
			}
			seen[p] = true
		}
	}
	if len(seen) != workers*each {
		t.Fatalf("%d addresses handed out, want %d", len(seen), workers*each)
	}
}
