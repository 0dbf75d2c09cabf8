-- reverses V3 exactly: only orders V3 billed go back to 'new'
DROP TABLE order_totals;
UPDATE orders SET status = 'new' WHERE status = 'billed';
