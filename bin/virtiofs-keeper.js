#!/usr/bin/env node
'use strict';
// The one JS shim: the CLI itself is compiled TypeScript.
require('../dist/cli/main.js').main(process.argv.slice(2));
