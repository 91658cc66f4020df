package policy

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
)

// Identity tags carry values that are no Kubernetes label values: images,
// names, container IDs.
var (
	imageValue = "registry.local:5000/team/nginx:1.25"
	nameValue  = "/web-1"
	idValue    = strings.Repeat("0123456789abcdef", 4) // 64 hex digits
	longValue  = strings.Repeat("x", MaxValueLen)
)

// TestSelectorValues: the string form accepts any tag value, bare or in
// double quotes, in every operator; matching uses the decoded values.
func TestSelectorValues(t *testing.T) {
	tags := identity.Tags{{Key: "@sys:id", Value: idValue}, {Key: "@sys:image", Value: imageValue}, {Key: "@sys:name", Value: nameValue}, {Key: "app", Value: "web"}, {Key: "note", Value: `say "hi" \o/`}}
	other := identity.Tags{{Key: "@sys:image", Value: "nginx:1.25"}, {Key: "@sys:name", Value: "/web-2"}, {Key: "app", Value: "web"}}
	cases := []struct {
		text      string
		want      string // requirementsText of the result
		tags, not bool   // matches tags, matches other
	}{
		{`@sys:image=registry.local:5000/team/nginx:1.25`, `@sys:image="registry.local:5000/team/nginx:1.25"`, true, false},
		{`@sys:image="registry.local:5000/team/nginx:1.25"`, `@sys:image="registry.local:5000/team/nginx:1.25"`, true, false},
		{`@sys:image == nginx:1.25`, `@sys:image="nginx:1.25"`, false, true},
		{`@sys:image!=nginx:1.25`, `@sys:image!="nginx:1.25"`, true, false},
		{`@sys:image != "nginx:1.25", app=web`, `app=web,@sys:image!="nginx:1.25"`, true, false}, // apimachinery's order (by encoded key)
		{`@sys:name in (/web-1, "/web-2")`, `@sys:name in ("/web-1","/web-2")`, true, true},
		{`@sys:name notin (/web-1,@x:y)`, `@sys:name notin ("/web-1","@x:y")`, false, true},
		{`@sys:name notin ("/web-1")`, `@sys:name!="/web-1"`, false, true},
		{`@sys:id=` + idValue, `@sys:id="` + idValue + `"`, true, false},
		{`@sys:id in (` + idValue + `,x)`, `@sys:id in ("` + idValue + `",x)`, true, false},
		{`note="say \"hi\" \\o/"`, `note="say \"hi\" \\o/"`, true, false},
		{`note in ("say \"hi\" \\o/", "a, b (c)")`, `note in ("a, b (c)","say \"hi\" \\o/")`, true, false},
		{`note notin ("a=b", "!x")`, `note notin ("!x","a=b")`, true, true},
		{`app="web"`, `app=web`, true, true},
		{`app in ("web", web)`, `app=web`, true, true},
		{`app=""`, `app=`, false, false},
		{`app in ("")`, `app=`, false, false},
		{`@sys:name="/web-1",@sys:image in (nginx:1.25, "registry.local:5000/team/nginx:1.25")`, `@sys:image in ("nginx:1.25","registry.local:5000/team/nginx:1.25"),@sys:name="/web-1"`, true, false},
		{`app=in`, `app=in`, false, false}, // apimachinery: in and notin are values here
		{`app in (in,notin)`, `app in (in,notin)`, false, false},
		{`note="é ü"`, `note="é ü"`, false, false},
		{`x=` + longValue, `x="` + longValue + `"`, false, false},
		{`!@sys:image`, `!@sys:image`, false, false},
	}
	for _, c := range cases {
		s, err := ParseSelector(c.text)
		if err != nil {
			t.Errorf("%s: %v", c.text, err)
			continue
		}
		if got := requirementsText(s.Requirements()); got != c.want {
			t.Errorf("%s: requirements %s, want %s", c.text, got, c.want)
		}
		if matchesTags(s, tags) != c.tags || matchesTags(s, other) != c.not {
			t.Errorf("%s: matches %v %v, want %v %v", c.text, matchesTags(s, tags), matchesTags(s, other), c.tags, c.not)
		}
		// apimachinery, where it can hold the values, agrees.
		if k := k8sSelector(s); k != nil && (k.Matches(k8sLabels(tags)) != c.tags || k.Matches(k8sLabels(other)) != c.not) {
			t.Errorf("%s: apimachinery matches %v %v, want %v %v", c.text, k.Matches(k8sLabels(tags)), k.Matches(k8sLabels(other)), c.tags, c.not)
		}
		// The engine, on decoded values.
		e, err := Compile(&Set{Policies: []Policy{{Name: "p", Selector: s}}})
		if err != nil {
			t.Fatal(err)
		}
		if got := len(e.ForPU(tags).Policies()) == 1; got != c.tags {
			t.Errorf("%s: engine selects %v, want %v", c.text, got, c.tags)
		}
		// The text renders back to the same selector.
		again, err := ParseSelector(c.want)
		if err != nil || requirementsText(again.Requirements()) != c.want {
			t.Errorf("%s: %s does not parse back: %v", c.text, c.want, err)
		}
	}
}

// TestSelectorValuesK8sUnchanged: selectors that apimachinery accepts mean
// the same as before; apimachinery is still their matcher in the tests.
func TestSelectorValuesK8sUnchanged(t *testing.T) {
	for _, text := range []string{"app=web, env in (prod,staging), tier!=db, !legacy", "x in (foo,,baz),y,z notin ()", "a=", "a==b", "a in (,)", "@sys:kind=container"} {
		s, err := ParseSelector(text)
		if err != nil {
			t.Fatalf("%s: %v", text, err)
		}
		if k8sSelector(s) == nil {
			t.Errorf("%s: no apimachinery matcher", text)
		}
	}
	s, _ := ParseSelector(`x in (foo,,baz),y,z notin ()`)
	if got, want := requirementsText(s.Requirements()), `x in (,baz,foo),y,z!=`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	s, _ = ParseSelector(`a="nginx:1.25"`)
	if k8sSelector(s) != nil {
		t.Error("apimachinery matcher for a value it cannot hold")
	}
}

// TestSelectorValueErrors: bad values, quotes and keys are refused with a
// message naming the problem.
func TestSelectorValueErrors(t *testing.T) {
	cases := []struct{ text, want string }{
		{`a="x`, "unterminated quoted value"},
		{`a="x\n"`, `bad escape`},
		{`a="x"y`, `quoted value followed by 'y'`},
		{`a=x"y`, `contains '"'`},
		{"a=x\u00a0y", "contains a space"},
		{"a=\"x\ty\"", "control character U+0009"},
		{"a=\"x\u0085\"", "control character U+0085"},
		{"a=x\x00", "NUL byte"},
		{"a\x00b", "NUL byte"}, // apimachinery would read "a"
		{"a=\"x\x00\"", "NUL byte"},
		{"a=\"\xff\"", "not valid UTF-8"},
		{`a=` + longValue + `y`, "longer than 512 bytes"},
		{`a in ("x", ` + longValue + `y)`, "longer than 512 bytes"},
		{`"a"=x`, "keys cannot be quoted"},
		{`!"a"`, "keys cannot be quoted"},
		{`a=b, "c" in (d)`, "keys cannot be quoted"},
		{`a "x"`, `found '"x"'`},
		{`a in ("x" "y")`, `found '"y"', expected: ',' or ')'`},
		{`a in ("x",`, `found '', expected: ',', or identifier`},
		{`a=b=c`, `found '=', expected: ',' or 'end of string'`},
		{`a>"1"`, `must be an integer`},
		{`a>1`, `not supported`},
		{`@sys:image=nginx:1.25 x`, `found 'x'`},
		{`sys.reserved.trireme/a="x:y"`, `reserved domain`},
	}
	for _, c := range cases {
		_, err := ParseSelector(c.text)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.text, err, c.want)
		}
	}
}

// TestStructuredSelectorValues: matchLabels and matchExpressions take any
// tag value; bad ones are reported at the value.
func TestStructuredSelectorValues(t *testing.T) {
	src := `policies:
  - name: a
    selector:
      matchLabels: {"@sys:image": "registry.local:5000/team/nginx:1.25"}
      matchExpressions:
        - {key: "@sys:name", operator: In, values: [/web-1, "/web-2"]}
        - {key: "@sys:id", operator: NotIn, values: ["` + idValue + `", 'say "hi"']}
    ingress:
      - from: [{selector: {matchLabels: {"@sys:name": "/db"}}}]
        action: allow
`
	s, err := Parse("f.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	sel := s.Policies[0].Selector
	want := `@sys:id notin ("` + idValue + `","say \"hi\""),@sys:image="registry.local:5000/team/nginx:1.25",@sys:name in ("/web-1","/web-2")`
	if got := requirementsText(sel.Requirements()); got != want || sel.Text != want {
		t.Fatalf("got %s (text %s), want %s", got, sel.Text, want)
	}
	e, err := Compile(s)
	if err != nil {
		t.Fatal(err)
	}
	web := identity.Tags{{Key: "@sys:image", Value: imageValue}, {Key: "@sys:name", Value: "/web-2"}}
	pu := e.ForPU(web)
	if len(pu.Policies()) != 1 || len(e.ForPU(identity.Tags{{Key: "@sys:image", Value: imageValue}, {Key: "@sys:name", Value: "/web-3"}}).Policies()) != 0 {
		t.Fatal("structured selector does not select by decoded values")
	}
	if d := pu.Ingress(identity.New(identity.Tags{{Key: "@sys:name", Value: "/db"}}), netip.MustParseAddr("10.0.0.1"), ipproto.TCP, 80); d.Action != Allow {
		t.Errorf("peer /db: %v", d.Action)
	}
	if d := pu.Ingress(identity.New(identity.Tags{{Key: "@sys:name", Value: "/dbx"}}), netip.MustParseAddr("10.0.0.1"), ipproto.TCP, 80); d.Action != Deny {
		t.Errorf("peer /dbx: %v", d.Action)
	}
}

// TestSelectorValueErrorPositions: a bad value in a file is reported at its
// own line and column (string form: inside the selector when it stands
// verbatim in the file; structured form: at the value).
func TestSelectorValueErrorPositions(t *testing.T) {
	cases := []struct{ src, want string }{
		{"policies:\n  - name: a\n    selector: app=x\"y\n",
			`f.yaml:3:19: policies[0].selector: bad selector "app=x\"y": value "x\"y" contains '"': write the value in double quotes, with \" for '"' and \\ for '\'`},
		{"policies:\n  - name: a\n    selector: 'app in (b, \"c)'\n",
			`f.yaml:3:27: policies[0].selector: bad selector "app in (b, \"c)": unterminated quoted value`},
		{"policies:\n  - name: a\n    selector: \"app=\\\"a\\tb\\\"\"\n", // escapes in YAML: the selector's column
			`f.yaml:3:15: policies[0].selector: bad selector "app=\"a\tb\"": value "a\tb" contains the control character U+0009`},
		{"policies:\n  - name: a\n    selector: {matchLabels: {a: \"x\\u0001\"}}\n",
			`f.yaml:3:33: policies[0].selector.matchLabels.a: value "x\x01" contains the control character U+0001`},
		{"policies:\n  - name: a\n    selector: {matchExpressions: [{key: a, operator: In, values: [ok, \"" + longValue + "y\"]}]}\n",
			`f.yaml:3:71: policies[0].selector.matchExpressions[0].values[1]: value "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"... is longer than 512 bytes`},
	}
	for _, c := range cases {
		_, err := Parse("f.yaml", []byte(c.src))
		if err == nil || err.Error() != c.want {
			t.Errorf("%q:\n got %v\nwant %s", c.src, err, c.want)
		}
	}
}
