// Package webui holds the files of the daemon's web page (a service map of
// the node's flows), embedded in the binary: no internet at run time. The
// daemon serves them (node/web.go) with the page's read-only API.
//
// assets/vendor/cytoscape.min.js is cytoscape.js 3.35.0 from npm
// (`npm pack cytoscape@3.35.0`, sha512-sMvBIXiGMnhkCaWz2R06FwF/27MNlS+Tqvi17foO9UhnUg3XGZccKjxsvEqQFAQYMSSZmN5SxYzUYlQ0DOJJ3g==,
// MIT licence in assets/vendor/cytoscape.LICENSE); `make webui-vendor`
// fetches it again.
package webui

import "embed"

// Assets is the page: index.html, app.js, style.css and vendor/.
//
//go:embed assets
var Assets embed.FS
