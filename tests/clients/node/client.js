// A petribill client in JavaScript, written from the .proto files alone: it
// creates a postpaid account, submits usage (one good record, one malformed),
// reads the balance and the usage history, runs the month's bill run and lists
// the invoices. Prints one JSON object of what the gateway answered.
//
//   node client.js HOST:PORT PROTO_ROOT ACCOUNT_ID MSISDN
//
// A secured cluster (docs/security.md) takes the variables of the petribill CLI:
// PETRIBILL_CA (speak TLS, trusting this CA), PETRIBILL_CERT and PETRIBILL_KEY
// (mutual TLS), PETRIBILL_TOKEN (sent as "authorization: Bearer <token>"). This
// client does the work of three systems, so PETRIBILL_TOKEN_CRM, _MEDIATION and
// _BILLING, when set, are used for the calls of those roles instead.
"use strict";
const fs = require("fs");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [address, protoRoot, accountId, msisdn] = process.argv.slice(2);
const definition = loader.loadSync(
  ["petribill/v1/accounts.proto", "petribill/v1/usage.proto", "petribill/v1/billing.proto"],
  { includeDirs: [protoRoot], keepCase: true, longs: String, enums: String, defaults: true },
);
const v1 = grpc.loadPackageDefinition(definition).petribill.v1;
const env = process.env;
const pem = (name) => (env[name] ? fs.readFileSync(env[name]) : null);
const credentials =
  env.PETRIBILL_CA || env.PETRIBILL_CERT
    ? grpc.credentials.createSsl(pem("PETRIBILL_CA"), pem("PETRIBILL_KEY"), pem("PETRIBILL_CERT"))
    : grpc.credentials.createInsecure();

function metadataFor(role) {
  const metadata = new grpc.Metadata();
  const token = env[`PETRIBILL_TOKEN_${role}`] || env.PETRIBILL_TOKEN;
  if (token) metadata.set("authorization", `Bearer ${token.trim()}`);
  return metadata;
}

const accounts = new v1.AccountService(address, credentials);
const usage = new v1.UsageService(address, credentials);
const billing = new v1.BillingService(address, credentials);
const roles = new Map([[accounts, "CRM"], [usage, "MEDIATION"], [billing, "BILLING"]]);

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 30000);
    const metadata = metadataFor(roles.get(client));
    client[method](request, metadata, { deadline }, (error, answer) =>
      error ? reject(error) : resolve(answer),
    );
  });
}

function serverStream(client, method, request) {
  return new Promise((resolve, reject) => {
    const items = [];
    const metadata = metadataFor(roles.get(client));
    const call = client[method](request, metadata, { deadline: new Date(Date.now() + 60000) });
    call.on("data", (item) => items.push(item));
    call.on("error", reject);
    call.on("end", () => resolve(items));
  });
}

const NOV_3 = 1793700000; // 2026-11-03 10:00 UTC
const DEC_20 = 1797724800; // 2026-12-20 00:00 UTC: past the grace period

async function main() {
  await unary(accounts, "CreateAccount", {
    request_id: `${accountId}-create`, account_id: accountId, payment_mode: "PAYMENT_MODE_POSTPAID",
    currency: "EUR", plan_id: "business", msisdns: [msisdn], start_s: String(NOV_3 - 86400),
  });
  const submitted = await unary(usage, "SubmitUsage", {
    records: [
      { record_id: `node:${accountId}-1`, service: "SERVICE_VOICE", served_msisdn: msisdn,
        record_opening_time_s: String(NOV_3), called_number: "442071234567", duration_s: "125" },
      { record_id: `node:${accountId}-2`, service: "SERVICE_VOICE", served_msisdn: msisdn,
        record_opening_time_s: String(NOV_3), called_number: "442071234567", duration_s: "-5" },
    ],
  });
  const balance = await unary(accounts, "GetBalance", { account_id: accountId });
  const history = await unary(accounts, "ListUsage", { account_id: accountId, limit: 10 });
  let notFound = null;
  try {
    await unary(accounts, "GetBalance", { account_id: `${accountId}-nobody` });
  } catch (error) {
    notFound = grpc.status[error.code];
  }
  const progress = await serverStream(billing, "RunBilling", {
    request_id: `${accountId}-bill`, cycle_id: "2026-11", account_ids: [accountId], at_s: String(DEC_20),
  });
  const invoices = await unary(billing, "ListInvoices", { account_id: accountId });
  console.log(JSON.stringify({
    results: submitted.results.map((r) => ({ record_id: r.record_id, status: r.status, reason: r.reason,
      amount_micros: r.amount ? r.amount.micros : "0" })),
    unbilled_micros: balance.unbilled.micros,
    history: history.lines.map((l) => l.record_id),
    not_found: notFound,
    bill_run_finished: progress.length > 0 && progress[progress.length - 1].finished,
    invoices: invoices.invoices.map((i) => ({ cycle_id: i.cycle_id, total_micros: i.total.micros,
      status: i.status })),
  }));
}

main().catch((error) => {
  console.error(`${error.code !== undefined ? grpc.status[error.code] : ""} ${error.message}`);
  process.exit(1);
});
