#!/usr/bin/env node
'use strict';
// virtiofsd's command line (what libvirt, Kata and others exec): `virtiofs-keeper virtiofsd ...`.
require('../dist/cli/main.js').main(['virtiofsd', ...process.argv.slice(2)]);
